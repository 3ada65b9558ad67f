"""`instructmining indicators` and `instructmining score`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import map_option, on_error_option, overwrite_option, quiet_option


@click.command("indicators")
def indicators_command() -> None:
    """List the registered indicators: name, what it measures, whether it needs a model."""
    from instructmining.indicators.registry import registered

    classes = registered()
    width = max(len(n) for n in classes)
    click.echo(f"{'name'.ljust(width)}  model  measures")
    for name, cls in sorted(classes.items()):
        flag = "yes" if cls.needs_model else "no"
        click.echo(f"{name.ljust(width)}  {flag.ljust(5)}  {cls.description}")


def _split_names(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from instructmining.indicators.registry import indicator_class

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
    default="input_length,output_length",
    show_default=True,
    callback=_split_names,
    help="Comma-separated indicator names (see `instructmining indicators`).",
)
@click.option("--keep-fields", is_flag=True, help="Also write every field of the input records.")
@map_option
@on_error_option
@overwrite_option
@quiet_option
def score_command(
    data: Path,
    output: Path,
    names: list[str],
    keep_fields: bool,
    field_map: dict[str, str],
    on_error: Any,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Score every record of DATA and write one row per record to OUTPUT.

    DATA is .jsonl, .json, .csv or .parquet (optionally .gz), or a folder written
    by datasets' save_to_disk. Alpaca, Dolly, prompt/completion, chat messages,
    ShareGPT and HH-RLHF layouts are recognised; use --map for anything else.
    A summary is printed and written to OUTPUT.summary.json.
    """
    from instructmining.indicators.engine import format_summary, score_file
    from instructmining.progress import progress_enabled

    report = score_file(
        data,
        output,
        indicators=names,
        field_map=field_map or None,
        on_error=on_error,
        keep_fields=keep_fields,
        overwrite=overwrite,
        progress=progress_enabled(quiet),
    )
    click.echo(f"{report.n_records} records ({report.schema}) scored -> {report.output}")
    if report.rejects_path is not None:
        click.echo(f"skipped {report.n_rejects} rows; reasons in {report.rejects_path}", err=True)
    click.echo(format_summary(report.summary))
