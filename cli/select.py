"""`instructmining select`: rank a pool with a rule (or a baseline) and write the best subset."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import (
    engine_options,
    make_executor,
    map_option,
    model_options,
    on_error_option,
    overwrite_option,
    quiet_option,
    run_settings,
    training_options,
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
    default="rule",
    show_default=True,
    metavar="NAME",
    help="rule, rule-in-range, random, longest, top:IND, bottom:IND, kcenter or a plugin's; "
    "NAME+diverse:COS re-ranks it (README, 'Selection strategies').",
)
@click.option(
    "--diversity",
    type=click.FloatRange(0, 1, min_open=True),
    metavar="COS",
    help="Skip a record whose cosine similarity to a kept one exceeds COS "
    "(embedding space of the rule's knn6; TF-IDF + SVD offline).",
)
@click.option(
    "--within-range",
    is_flag=True,
    help="Keep every subset mean of a rule indicator inside the range the rule was fitted "
    "on: swap records of the top k for the best-ranked ones that bring a mean back in "
    "(exit 2 if no such subset is found).",
)
@click.option(
    "--exclude-eval",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="EVAL",
    help="Drop the records overlapping this evaluation set before ranking, as "
    "`instructmining check --eval` finds them (default settings); repeatable.",
)
@click.option(
    "--dedup",
    is_flag=True,
    help="Keep one record per exact or near-duplicate cluster (as `check --dedup` finds "
    "them) before choosing: the best by the rule, else the lowest id.",
)
@click.option(
    "--dedup-semantic",
    type=float,
    metavar="COS",
    help="Duplicates also by cosine similarity >= COS in the rule's knn6 space (implies --dedup).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of a seeded strategy (random; kcenter without a rule).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Also write DIR/index.html: pool and subset histograms, correlations, lowest and "
    "highest records per indicator, indicator health.",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=None,
    help="Score cache (SQLite); default $INSTRUCTMINING_CACHE or ./.instructmining/cache.sqlite.",
)
@click.option("--no-cache", is_flag=True, help="Compute every score; read and write no cache.")
@click.option(
    "--size",
    "size_mode",
    type=click.Choice(["auto"]),
    default=None,
    help="auto: search the subset size that minimises the eval loss by finetuning "
    "top-s subsets through the study runner (needs --study; with --within-range each "
    "size is chosen inside the fitted range).",
)
@click.option(
    "--study",
    "study_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Study folder giving D_eval and the base model for --size auto.",
)
@click.option(
    "--budget",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Finetuning runs the size search may spend.",
)
@click.option(
    "--min-size",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Smallest subset size the search tries.",
)
@training_options("--train-batch-size", seed=False)
@model_options
@engine_options
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
    within_range: bool,
    exclude_eval: tuple[Path, ...],
    dedup: bool,
    dedup_semantic: float | None,
    seed: int,
    report_dir: Path | None,
    cache: Path | None,
    no_cache: bool,
    models: dict[str, str],
    device: str | None,
    batch_size: int | None,
    field_map: dict[str, str],
    on_error: Any,
    overwrite: bool,
    quiet: bool,
    size_mode: str | None,
    study_dir: Path | None,
    budget: int,
    min_size: int,
    base_model: str,
    engine: str,
    num_actors: int,
    gpus_per_actor: float,
    ray_address: str | None,
    **training: Any,
) -> None:
    """Select the records of DATA that RULE predicts to lower the finetuned loss most.

    \b
    Examples:
      instructmining select dolly.json --rule rule.json -k 1000 -o subset.json
      instructmining select pool.jsonl --rule paper-v3 --model unieval=/models/unieval \\
          --model reward=/models/oasst-rm --fraction 0.1 -o subset.jsonl --scores-out s.parquet
      instructmining select pool.jsonl --strategy random -k 1000 --seed 3 -o random.jsonl
      instructmining select pool.jsonl --rule rule.json -k 256 --within-range -o inside.jsonl
      instructmining select pool.jsonl --rule rule.json --size auto --study study/ --budget 8 \\
          -o best.jsonl

    With a rule, every rule indicator whose subset mean lies outside the range the
    rule was fitted on gets a warning on stderr (and in OUTPUT.selection.json).
    """
    from instructmining.indicators.cache import default_cache_path
    from instructmining.progress import progress_enabled
    from instructmining.regression import load_rule
    from instructmining.selection import FittedRangeWarning, select_file
    from instructmining.selection.dedup import DedupSettings
    from instructmining.selection.strategies import parse

    chooser = parse(strategy, option="--strategy")
    if within_range:  # say it in the flags the user typed, before the API's own check
        if chooser.key not in ("rule", "rule-in-range"):
            raise click.UsageError(
                f"--within-range works with --strategy rule (the default), not {strategy!r}; "
                "drop one of the two"
            )
        if rule_spec is None:
            raise click.UsageError("--within-range needs --rule RULE.json|smollm2-v1|paper-v3")
        if diversity is not None or max_predicted_loss is not None:
            raise click.UsageError(
                "--within-range takes -k, --fraction or --size auto; it does not combine "
                "with --diversity or --max-predicted-loss"
            )

    if report_dir is not None:
        if size_mode == "auto":
            raise click.UsageError("--report does not combine with --size auto")
        from instructmining.indicators.report import check_report_dir

        check_report_dir(report_dir, overwrite=overwrite)
    if size_mode == "auto":
        if engine != "local":
            raise click.UsageError("--engine ray does not combine with --size auto")
        _size_search(
            data,
            rule_spec,
            output,
            study_dir,
            budget,
            min_size,
            base_model,
            training,
            models,
            field_map,
            on_error,
            overwrite,
            quiet,
            chooser=chooser,
            seed=seed,
            within_range=within_range,
            exclude_eval=exclude_eval,
            dedup=DedupSettings(semantic=dedup_semantic)
            if dedup or dedup_semantic is not None
            else None,
        )
        return
    if sum(x is not None for x in (k, fraction, max_predicted_loss)) != 1:
        raise click.UsageError(
            "give exactly one of -k, --fraction, --max-predicted-loss (or --size auto)"
        )
    if chooser.needs_rule and rule_spec is None:
        raise click.UsageError(f"--strategy {strategy} needs --rule RULE.json|paper-v1|paper-v3")
    try:
        rule = load_rule(rule_spec) if rule_spec is not None else None
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="--rule") from None
    executor = make_executor(engine, num_actors, gpus_per_actor, ray_address)
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        if executor is not None:
            stack.callback(executor.close)
        # printed below as plain lines, not in Python's warning format
        warnings.simplefilter("ignore", FittedRangeWarning)
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
            within_range=within_range,
            exclude_eval=list(exclude_eval),
            dedup=DedupSettings(semantic=dedup_semantic)
            if dedup or dedup_semantic is not None
            else None,
            seed=seed,
            models=models,
            device=device,
            batch_size=batch_size,
            cache=None if no_cache else (cache or default_cache_path()),
            progress=progress_enabled(quiet),
            executor=executor,
        )
    chosen = report.selection
    click.echo(f"selected {report.n_selected} of {report.n_pool} records -> {report.output}")
    if report.contamination is not None:
        kinds = report.contamination.summary()["by_kind"]
        click.echo(
            f"{report.n_excluded} records dropped as overlapping the evaluation set "
            f"({', '.join(f'{k} {v}' for k, v in kinds.items())})"
        )
    if chosen.settings.get("dedup") is not None:
        click.echo(
            f"{chosen.duplicates_dropped} records dropped as duplicates "
            f"({chosen.duplicate_clusters} clusters, one kept of each)"
        )
    if chosen.rejected_for_diversity:
        click.echo(f"{chosen.rejected_for_diversity} records skipped as too similar")
    if within_range:
        click.echo(f"{chosen.range_swaps} swaps kept the subset inside the rule's fitted range")
    for name, means in report.summary().items():
        line = f"  {name:<20} pool mean {means['pool']:.4g}   selected mean {means['selected']:.4g}"
        fitted = chosen.range_check.get(name)
        if fitted is not None:
            if "pool_column_mean" in fitted:  # set-level: the subset's value among itself
                line += f"   within the subset {fitted['subset_mean']:.4g}"
            line += f"   fitted range [{fitted['min']:.4g}, {fitted['max']:.4g}]"
        click.echo(line)
    for message in chosen.range_warnings:
        click.echo(f"warning: {message}", err=True)
    if rule is not None and chooser.needs_rule and not chosen.range_check and rule.features:
        click.echo(
            f"note: the rule {rule.name!r} records no fitted range; the subset's indicator "
            "means were not checked against one",
            err=True,
        )
    if report.rejects_path is not None:
        click.echo(f"skipped {report.n_rejects} rows; reasons in {report.rejects_path}", err=True)
    if report_dir is not None:
        from instructmining.selection.report import write_select_report

        page = write_select_report(
            report, report_dir, rule=rule, models=models, source=data, overwrite=overwrite
        )
        click.echo(f"report -> {page}")


def _size_search(
    data: Path,
    rule_spec: str | None,
    output: Path,
    study_dir: Path | None,
    budget: int,
    min_size: int,
    base_model: str,
    training: dict[str, Any],
    models: dict[str, str],
    field_map: dict[str, str],
    on_error: Any,
    overwrite: bool,
    quiet: bool,
    *,
    chooser: Any,
    seed: int,
    within_range: bool,
    exclude_eval: tuple[Path, ...] = (),
    dedup: Any = None,
) -> None:
    from instructmining.experiments.size_search import size_search
    from instructmining.progress import progress_enabled
    from instructmining.readers import read_records
    from instructmining.regression import load_rule
    from instructmining.writers import check_output, write_rows

    if study_dir is None or (rule_spec is None and chooser.needs_rule):
        raise click.UsageError("--size auto needs --rule and --study")
    out = check_output(output, overwrite=overwrite, inputs=[data])
    try:
        rule = load_rule(rule_spec) if rule_spec is not None else None
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="--rule") from None
    if within_range:  # every size's subset chosen inside the rule's fitted range
        from instructmining.selection.select import resolve_strategy

        chooser = resolve_strategy(chooser, rule, within_range=True)[1]
    settings = run_settings(base_model, **training)
    evalset = None
    if exclude_eval:  # read and checked before the pool, as plain select does
        from instructmining.selection.contamination import read_eval_files

        evalset = read_eval_files(exclude_eval, option="--exclude-eval")
    pool = read_records(data, field_map=field_map or None, on_error=on_error).records
    if evalset is not None:
        from instructmining.selection.contamination import find_contamination

        overlap = find_contamination(pool, evalset.records, evalset.origin, parts=evalset.parts)
        dropped = set(overlap.contaminated)
        pool = [r for i, r in enumerate(pool) if i not in dropped]
        kinds = overlap.summary()["by_kind"]
        click.echo(
            f"{len(dropped)} records dropped as overlapping the evaluation set"
            + (f" ({', '.join(f'{k} {v}' for k, v in kinds.items())})" if kinds else "")
        )

    def report(size: int, loss: float) -> None:
        if math.isnan(loss):
            click.echo(f"size {size}: left out (no subset of it stays in the fitted range)")
        else:
            click.echo(f"size {size}: eval_loss {loss:.4f}")

    found = size_search(
        study_dir,
        pool,
        rule,
        strategy=chooser,
        seed=seed,
        budget=budget,
        min_size=min_size,
        settings=settings,
        models=models,
        progress=progress_enabled(quiet),
        on_result=report,
        dedup=dedup,
    )
    if dedup is not None:
        click.echo(f"{found.duplicates_dropped} records dropped as duplicates before the search")
    write_rows([dict(r.fields) for r in found.subset], out, overwrite=overwrite, inputs=[data])
    click.echo(f"best size {found.best_size} of {found.pool_size} -> {out}")
    click.echo(f"loss-vs-size curve: {found.folder / 'curve.csv'} and curve.png")
