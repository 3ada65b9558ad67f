"""Options shared by several commands."""

from __future__ import annotations

from typing import Any

import click

from instructmining.schemas import parse_field_map


def _parse_map(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    try:
        out: dict[str, str] = {}
        for spec in value:
            out.update(parse_field_map(spec))
        return out
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--map: "), ctx, param) from None


def map_option(f: Any) -> Any:
    return click.option(
        "--map",
        "field_map",
        multiple=True,
        callback=_parse_map,
        metavar="TARGET=FIELD,...",
        help="Name the source fields: instruction, input, output, id, or messages/"
        "conversations/transcript for chats (e.g. --map instruction=question,output=answer; "
        "--map transcript=rejected reads HH-RLHF's rejected side).",
    )(f)


def on_error_option(f: Any) -> Any:
    return click.option(
        "--on-error",
        type=click.Choice(["raise", "skip"]),
        default="raise",
        show_default=True,
        help="On a malformed row: stop (exit 2), or skip it and write it to OUT.rejects.jsonl.",
    )(f)


def overwrite_option(f: Any) -> Any:
    return click.option("--overwrite", is_flag=True, help="Replace an existing output file.")(f)


def quiet_option(f: Any) -> Any:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar.")(f)


def _parse_models(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in value:
        key, sep, path = item.partition("=")
        if not sep or not key.strip() or not path.strip():
            raise click.BadParameter(
                f"{item!r} is not NAME=CHECKPOINT (e.g. --model reward=/models/rm)", ctx, param
            )
        out[key.strip()] = path.strip()
    return out


def model_options(f: Any) -> Any:
    """--model NAME=CHECKPOINT (repeatable), --device, --batch-size."""
    f = click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Records per model batch (default: each indicator's own).",
    )(f)
    f = click.option(
        "--device",
        default=None,
        metavar="auto|cpu|cuda[:N]",
        help="Where models run (default auto: a GPU when visible).",
    )(f)
    return click.option(
        "--model",
        "models",
        multiple=True,
        callback=_parse_models,
        metavar="NAME=CHECKPOINT",
        help="Checkpoint (hub id or local path) for an indicator; `unieval` sets naturalness, "
        "coherence and understandability together. Repeatable.",
    )(f)
