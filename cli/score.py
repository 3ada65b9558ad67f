"""`instructmining indicators` and `instructmining score`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import (
    engine_options,
    make_executor,
    map_option,
    model_option,
    on_error_option,
    overwrite_option,
    quiet_option,
    settings_option,
)


@click.command("indicators")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also list each indicator's own settings with their defaults (for `score --set`).",
)
def indicators_command(verbose: bool) -> None:
    """List the registered indicators: name, backends, whether the paper's backend needs a model.

    The offline profile (the default of `score`) computes every indicator whose
    listed backends include one that needs no downloaded weights.
    """
    from instructmining.indicators.profiles import OFFLINE_INDICATORS, PAPER_MODELS
    from instructmining.indicators.registry import registered

    classes = registered()
    rows = []
    for name, cls in sorted(classes.items()):
        backends = ", ".join(cls.backends) if cls.backends else _default_backend(cls)
        model = "yes" if cls.needs_model else "no"
        offline = "yes" if name in OFFLINE_INDICATORS else "no"
        rows.append((name, model, offline, backends, cls.description))
    widths = [
        max(len(r[i]) for r in [("name", "model", "offline", "backends", ""), *rows])
        for i in range(4)
    ]
    header = ("name", "model", "offline", "backends")
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  measures")
    for row in rows:
        click.echo(
            "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + f"  {row[4]}"
        )
    click.echo(
        "\nmodel: downloaded weights for the paper's backend; offline: in the default profile."
        "\nPaper checkpoints (--profile paper; set one with --model KEY=PATH, "
        "KEY = indicator or 'unieval'):"
    )
    for name, spec in PAPER_MODELS.items():
        click.echo(f"  {name}: {spec}")
    if verbose:
        from instructmining.indicators.spec import allowed_settings, constructor_settings

        click.echo("\nSettings (score --set IND.KEY=VALUE; model, device, batch_size,")
        click.echo("max_length and dtype have their own options):")
        own = ("model", "device", "batch_size", "max_length", "dtype")
        for name, cls in sorted(classes.items()):
            named, _ = constructor_settings(cls)
            shown = [
                f"{key}={named[key].default!r}"
                if named[key].default is not named[key].empty
                else key
                for key in allowed_settings(cls)
                if key not in own
            ]
            click.echo(f"  {name}: {', '.join(shown) or '(none)'}")


def _default_backend(cls: Any) -> str:
    try:
        return str(cls().backend)
    except Exception:  # a plugin that cannot be built without settings
        return "?"


def _split_names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    from instructmining.indicators.registry import indicator_class

    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("give at least one indicator name", ctx, param)
    for name in names:
        try:
            indicator_class(name)
        except KeyError as exc:
            raise click.BadParameter(str(exc.args[0]), ctx, param) from None
    return names


@click.command("score")
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Scores file: .jsonl, .csv or .parquet (one row per record).",
)
@click.option(
    "-i",
    "--indicators",
    "names",
    default=None,
    callback=_split_names,
    help="Comma-separated indicator names (see `instructmining indicators`); "
    "default: the profile's set.",
)
@click.option(
    "--profile",
    type=click.Choice(["local", "lite", "offline", "paper"]),
    default=None,
    help="offline (default): every indicator that needs no downloaded weights; "
    "paper: the paper's nine indicators and checkpoints.",
)
@model_option
@settings_option
@click.option(
    "--device",
    default=None,
    metavar="auto|cpu|cuda[:N]",
    help="Where models run (default auto: a GPU if visible).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Model batch size.")
@click.option(
    "--max-length",
    type=click.IntRange(min=2),
    default=None,
    help="Truncate model inputs to this many tokens (truncations are counted and reported).",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
    default=None,
    help="Model weights' dtype (auto: bf16 on a GPU that supports it, else fp32).",
)
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Score cache (SQLite); default $INSTRUCTMINING_CACHE or ./.instructmining/cache.sqlite.",
)
@click.option("--no-cache", is_flag=True, help="Compute everything; read and write no cache.")
@click.option("--keep-fields", is_flag=True, help="Also write every field of the input records.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Also write DIR/index.html: histograms, correlations, lowest and highest records "
    "per indicator, indicator health (one self-contained page).",
)
@engine_options
@map_option
@on_error_option
@overwrite_option
@quiet_option
def score_command(
    data: Path,
    output: Path,
    names: list[str] | None,
    profile: str | None,
    models: dict[str, str],
    settings: dict[str, dict[str, Any]],
    device: str | None,
    batch_size: int | None,
    max_length: int | None,
    dtype: str | None,
    cache_path: Path | None,
    no_cache: bool,
    keep_fields: bool,
    report_dir: Path | None,
    engine: str,
    num_actors: int,
    gpus_per_actor: float,
    ray_address: str | None,
    field_map: dict[str, str],
    on_error: Any,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Score every record of DATA and write one row per record to OUTPUT.

    DATA is .jsonl, .json, .csv or .parquet (optionally .gz), or a folder written
    by datasets' save_to_disk. Alpaca, Dolly, prompt/completion, chat messages,
    ShareGPT and HH-RLHF layouts are recognised; use --map for anything else.
    A summary is printed and written to OUTPUT.summary.json, with a line per
    indicator that is constant, mostly NaN or takes a handful of values.
    """
    from instructmining.indicators.cache import default_cache_path
    from instructmining.indicators.engine import format_summary, score_file
    from instructmining.indicators.health import health_lines
    from instructmining.indicators.report import check_report_dir, write_score_report
    from instructmining.progress import progress_enabled

    if no_cache and cache_path is not None:
        raise click.UsageError("--cache and --no-cache exclude each other")
    if device is not None and not (
        device in ("auto", "cpu") or device == "cuda" or device.startswith("cuda:")
    ):
        raise click.BadParameter(f"{device!r}: use auto, cpu or cuda[:N]", param_hint="--device")
    if report_dir is not None:
        check_report_dir(report_dir, overwrite=overwrite)
    executor = make_executor(engine, num_actors, gpus_per_actor, ray_address)
    try:
        report = score_file(
            data,
            output,
            indicators=names,
            profile=profile,
            models=models or None,
            device=device,
            batch_size=batch_size,
            max_length=max_length,
            dtype=dtype,
            settings=settings or None,
            cache=None if no_cache else (cache_path or default_cache_path()),
            field_map=field_map or None,
            on_error=on_error,
            keep_fields=keep_fields,
            overwrite=overwrite,
            progress=progress_enabled(quiet),
            keep_records=report_dir is not None,
            executor=executor,
        )
    finally:
        if executor is not None:
            executor.close()
    click.echo(
        f"{report.n_records} records ({report.schema}) scored -> {report.output} "
        f"[profile {report.profile}, {report.seconds:.1f} s]"
    )
    if report.rejects_path is not None:
        click.echo(f"skipped {report.n_rejects} rows; reasons in {report.rejects_path}", err=True)
    for name, how in report.computed_by.items():
        search = report.runs.get(name, {}).get("neighbours")
        click.echo(f"{name}: {how}" + (f"; {search['text']}" if search else ""))
    for name, reason in report.left_out.items():
        click.echo(f"left out {name}: {reason}")
    computed = sum(r["computed"] for r in report.runs.values())
    cached = sum(r["cached"] for r in report.runs.values())
    if report.cache is not None:
        click.echo(f"cache {report.cache}: {cached} scores reused, {computed} computed")
    for name, run in report.runs.items():
        if run.get("features_computed") is not None:
            click.echo(
                f"{name}: {run['features_computed']} embeddings computed, "
                f"{run['features_cached']} from the cache"
            )
        if run["truncated"]:
            click.echo(f"{name}: {run['truncated']} records truncated at the maximum length")
    click.echo(format_summary(report.summary))
    for line in health_lines(report.health, len(report.columns)):
        click.echo(line)
    if report_dir is not None:
        page = write_score_report(report, report_dir, source=data, overwrite=overwrite)
        click.echo(f"report -> {page}")
