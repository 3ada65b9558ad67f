"""`instructmining select`: rank a pool with a rule (or a baseline) and write the best subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import (
    map_option,
    model_options,
    on_error_option,
    overwrite_option,
    quiet_option,
)


@click.command("select")
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "-r",
    "--rule",
    "rule_spec",
    metavar="RULE.json|paper-v1|paper-v3",
    help="The rule that ranks the records (needed by --strategy rule).",
)
@click.option("-k", type=click.IntRange(min=1), help="Keep this many records.")
@click.option(
    "--fraction",
    type=click.FloatRange(0, 1, min_open=True),
    help="Keep this fraction of the pool (rounded up).",
)
@click.option(
    "--max-predicted-loss",
    type=float,
    metavar="T",
    help="Keep every record whose predicted loss is at most T.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="The subset, with the input's fields (.jsonl, .json, .csv, .parquet).",
)
@click.option(
    "--scores-out",
    type=click.Path(path_type=Path),
    help="Every record's indicators, prediction, rank and whether it was selected.",
)
@click.option(
    "--strategy",
    type=click.Choice(["rule", "random", "longest"]),
    default="rule",
    show_default=True,
    help="Rank by the rule, or a baseline: random or longest output.",
)
@click.option(
    "--diversity",
    type=click.FloatRange(0, 1, min_open=True),
    metavar="COS",
    help="Skip a record whose cosine similarity to a kept one exceeds COS "
    "(embedding space of the rule's knn6; TF-IDF + SVD offline).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --strategy random.")
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=None,
    help="Score cache (SQLite) reused across runs.",
)
@model_options
@map_option
@on_error_option
@overwrite_option
@quiet_option
def select_command(
    data: Path,
    rule_spec: str | None,
    k: int | None,
    fraction: float | None,
    max_predicted_loss: float | None,
    output: Path,
    scores_out: Path | None,
    strategy: str,
    diversity: float | None,
    seed: int,
    cache: Path | None,
    models: dict[str, str],
    device: str | None,
    batch_size: int | None,
    field_map: dict[str, str],
    on_error: Any,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Select the records of DATA that RULE predicts to lower the finetuned loss most.

    \b
    Examples:
      instructmining select dolly.json --rule rule.json -k 1000 -o subset.json
      instructmining select pool.jsonl --rule paper-v3 --model unieval=/models/unieval \\
          --model reward=/models/oasst-rm --fraction 0.1 -o subset.jsonl --scores-out s.parquet
      instructmining select pool.jsonl --strategy random -k 1000 --seed 3 -o random.jsonl
    """
    from instructmining.progress import progress_enabled
    from instructmining.regression import load_rule
    from instructmining.selection import select_file

    if sum(x is not None for x in (k, fraction, max_predicted_loss)) != 1:
        raise click.UsageError("give exactly one of -k, --fraction, --max-predicted-loss")
    if strategy == "rule" and rule_spec is None:
        raise click.UsageError("--strategy rule needs --rule RULE.json|paper-v1|paper-v3")
    try:
        rule = load_rule(rule_spec) if rule_spec is not None else None
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="--rule") from None
    report = select_file(
        data,
        output,
        rule=rule,
        scores_out=scores_out,
        field_map=field_map or None,
        on_error=on_error,
        overwrite=overwrite,
        k=k,
        fraction=fraction,
        max_predicted_loss=max_predicted_loss,
        strategy=strategy,
        diversity=diversity,
        seed=seed,
        models=models,
        device=device,
        batch_size=batch_size,
        cache=cache,
        progress=progress_enabled(quiet),
    )
    click.echo(f"selected {report.n_selected} of {report.n_pool} records -> {report.output}")
    if report.selection.rejected_for_diversity:
        click.echo(f"{report.selection.rejected_for_diversity} records skipped as too similar")
    for name, means in report.summary().items():
        click.echo(
            f"  {name:<20} pool mean {means['pool']:.4g}   selected mean {means['selected']:.4g}"
        )
    if report.rejects_path is not None:
        click.echo(f"skipped {report.n_rejects} rows; reasons in {report.rejects_path}", err=True)
