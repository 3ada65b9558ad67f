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
    return model_option(f)


def model_option(f: Any) -> Any:
    """--model NAME=CHECKPOINT (repeatable)."""
    return click.option(
        "--model",
        "models",
        multiple=True,
        callback=_parse_models,
        metavar="NAME=CHECKPOINT",
        help="Checkpoint (hub id or local path) for an indicator; `unieval` sets naturalness, "
        "coherence and understandability together. Repeatable.",
    )(f)


def training_options(batch_flag: str = "--batch-size") -> Any:
    """Finetuning settings shared by the commands that train: base model, LoRA, epochs, ..."""

    def decorate(f: Any) -> Any:
        for option in reversed(
            [
                click.option(
                    "--base-model",
                    default="tiny",
                    show_default=True,
                    help="A causal LM (local folder or hub id), or `tiny`: a small GPT-2 "
                    "built on the study's sources (demonstrations and CI only).",
                ),
                click.option(
                    "--lora",
                    is_flag=True,
                    default=None,
                    help="Train LoRA adapters (peft) instead of every weight.",
                ),
                click.option(
                    "--epochs", type=click.IntRange(min=1), help="Default 3 (2 for tiny)."
                ),
                click.option(
                    "--lr",
                    type=click.FloatRange(min=0, min_open=True),
                    help="Default 2e-5 (1e-3 for tiny).",
                ),
                click.option(
                    batch_flag,
                    "train_batch_size",
                    type=click.IntRange(min=1),
                    help="Training batch size (default 16).",
                ),
                click.option(
                    "--max-length",
                    type=click.IntRange(min=8),
                    help="Tokens per example; default 512 (256 for tiny).",
                ),
                click.option(
                    "--train-device",
                    "train_device",
                    default=None,
                    help="Where finetuning runs: auto, cpu or cuda[:N] (default auto).",
                ),
                click.option(
                    "--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads."
                ),
            ]
        ):
            f = option(f)
        return f

    return decorate


def run_settings(
    base_model: str,
    *,
    lora: bool | None,
    epochs: int | None,
    lr: float | None,
    train_batch_size: int | None,
    max_length: int | None,
    train_device: str | None,
    threads: int | None,
) -> Any:
    """RunSettings from `training_options` values (unset ones keep the defaults)."""
    from instructmining.experiments.runner import settings_for

    over: dict[str, Any] = {
        "lora": lora,
        "epochs": epochs,
        "lr": lr,
        "batch_size": train_batch_size,
        "max_length": max_length,
        "device": train_device,
        "threads": threads,
    }
    try:
        return settings_for(base_model, **{k: v for k, v in over.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
