"""`instructmining study plan|run|fit|status`: the finetuning study."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import (
    bootstrap_option,
    model_option,
    overwrite_option,
    phase_logger,
    phases_without_bars,
    quiet_option,
    run_settings,
    settings_option,
    training_options,
)

STUDY_EPILOG = """\b
Examples:
  instructmining study plan --source alpaca=alpaca.json --source dolly=dolly.json \\
      --eval self_instruct_user_oriented_252.jsonl --eval vicuna80_questions.jsonl \\
      --eval vicuna80_answers_gpt35.jsonl --n-mixtures 40 --size 1000 -o my_study
  instructmining study run my_study --base-model tiny
  instructmining study status my_study
  instructmining study fit my_study
"""


@click.group("study", epilog=STUDY_EPILOG)
def study_group() -> None:
    """The finetuning study: plan candidate datasets, finetune and evaluate each, fit a rule."""


def _parse_sources(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in value:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise click.BadParameter(f"expected NAME=PATH, got {spec!r}", ctx, param)
        if name in out:
            raise click.BadParameter(f"source {name!r} given twice", ctx, param)
        out[name.strip()] = Path(path.strip())
    if not out:
        raise click.BadParameter("give at least one --source NAME=PATH", ctx, param)
    return out


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    from instructmining.indicators.registry import indicator_class

    names = [n.strip() for n in value.split(",") if n.strip()]
    for name in names:
        try:
            indicator_class(name)
        except KeyError as exc:
            raise click.BadParameter(str(exc.args[0]), ctx, param) from None
    return names


@study_group.command("plan")
@click.option(
    "--source",
    "sources",
    multiple=True,
    callback=_parse_sources,
    metavar="NAME=PATH",
    help="A candidate source (repeat for each): any file `score` reads.",
)
@click.option(
    "--eval",
    "eval_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="D_eval part (repeat): Self-Instruct user-oriented file, Vicuna questions AND answers, "
    "or plain records.",
)
@click.option("--n-mixtures", default=40, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--size",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Records per candidate.",
)
@click.option(
    "--univariate",
    callback=_names,
    default=None,
    metavar="NAMES",
    help="Comma-separated indicators: sort the pooled sources by each and cut --bins bins.",
)
@click.option("--bins", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--bin-sample",
    type=click.IntRange(min=1),
    default=None,
    help="Cut the univariate bins over a seeded random sample of this many pool records "
    "(default: the whole pool); model-backed indicators on a CPU need it.",
)
@click.option(
    "--exclude-eval",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="EVAL",
    help="Also drop source records overlapping this evaluation set, as `instructmining "
    "check --eval` finds them (exact, n-gram, near); repeatable.",
)
@click.option(
    "--source-map",
    "source_maps",
    multiple=True,
    metavar="NAME:MAP",
    help="Field map for one source, as score's --map (e.g. hh_rejected:transcript=rejected).",
)
@click.option(
    "--profile",
    type=click.Choice(["local", "lite", "offline", "paper"]),
    default=None,
    help="Indicator profile whose models the study uses (default: local when its packaged "
    "models are installed, else lite).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "-i",
    "--indicators",
    callback=_names,
    default=None,
    metavar="NAMES",
    help="Indicators scored for every candidate (default: every indicator of --profile).",
)
@model_option
@settings_option
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Study folder.",
)
@overwrite_option
@quiet_option
def plan_command(
    sources: dict[str, Path],
    eval_paths: tuple[Path, ...],
    n_mixtures: int,
    size: int,
    univariate: list[str] | None,
    bins: int,
    bin_sample: int | None,
    exclude_eval: tuple[Path, ...],
    source_maps: tuple[str, ...],
    profile: str | None,
    seed: int,
    indicators: list[str] | None,
    models: dict[str, str],
    settings: dict[str, dict[str, Any]],
    out_dir: Path,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Plan candidate datasets into a new study folder.

    Mixtures draw random proportions over the sources (Dirichlet(1)) and sample
    --size records without replacement; univariate candidates sort the pooled
    sources by one indicator and draw --size records from each of --bins slices.
    Source records whose instruction + input occur in D_eval are removed first.
    """
    from instructmining.experiments.study import create_study
    from instructmining.progress import progress_enabled

    maps: dict[str, str] = {}
    for spec in source_maps:
        name, sep, fmap = spec.partition(":")
        if not sep or not name.strip() or not fmap.strip():
            raise click.BadParameter(
                f"expected NAME:FIELD=SOURCE[,...], got {spec!r}", param_hint="--source-map"
            )
        maps[name.strip()] = fmap.strip()
    report = create_study(
        out_dir,
        sources=sources,
        eval_paths=list(eval_paths),
        n_mixtures=n_mixtures,
        size=size,
        univariate=univariate or [],
        bins=bins,
        bin_sample=bin_sample,
        source_maps=maps,
        exclude_eval=list(exclude_eval),
        profile=profile,
        seed=seed,
        indicators=indicators,
        models=models or None,
        settings=settings or None,
        overwrite=overwrite,
        progress=progress_enabled(quiet),
    )
    removed = ", ".join(f"{k} {v}" for k, v in report.removed_overlap.items())
    click.echo(
        f"planned {report.n_candidates} candidates in {report.path}: pool {report.pool_size} "
        f"records, D_eval {report.eval_size}; removed as D_eval overlap: {removed}; "
        f"duplicates dropped: {report.duplicates}"
    )
    if report.contaminated is not None:
        dropped = ", ".join(f"{k} {v}" for k, v in report.contaminated.items())
        click.echo(f"removed as contaminated (--exclude-eval): {dropped}")


@study_group.command("run")
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@training_options(device_flag="--device")
@click.option(
    "--only",
    default=None,
    metavar="IDS",
    help="Comma-separated candidate ids to run (e.g. seed reruns with --seed).",
)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Local engine: candidates trained at once, each in its own process.",
)
@click.option(
    "--ray-address", default=None, help="Existing Ray cluster (default: start a local one)."
)
@click.option("--cpus-per-task", type=click.FloatRange(min=0), default=1, show_default=True)
@click.option("--gpus-per-task", type=click.FloatRange(min=0), default=0, show_default=True)
@click.option("--force", is_flag=True, help="Rerun finished candidates too.")
@click.option("--retry-failed", is_flag=True, help="Rerun candidates that failed before.")
@click.option("--keep-weights", is_flag=True, help="Keep each finetuned model in STUDY/runs/ID.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Run at most N candidates.")
@quiet_option
def run_command(
    study_dir: Path,
    base_model: str,
    engine: str,
    workers: int,
    ray_address: str | None,
    cpus_per_task: float,
    gpus_per_task: float,
    force: bool,
    retry_failed: bool,
    limit: int | None,
    only: str | None,
    quiet: bool,
    **options: Any,
) -> None:
    """Finetune and evaluate every unfinished candidate of STUDY_DIR.

    Resumable: finished candidates are skipped (unless --force), a failed one is
    recorded with its error and the study goes on. Each row holds the candidate's
    mean indicators, its eval loss (mean NLL per D_eval response token), the
    base model, the training config hash, seed, wall time and tokens seen.
    """
    from instructmining.experiments.runner import run_study
    from instructmining.progress import progress_enabled

    settings = run_settings(base_model, **options)

    def report(cid: str, status: str, info: Any) -> None:
        if status == "done":
            click.echo(
                f"{cid} done: eval_loss {info['eval_loss']:.4f}, {info['wall_s']:.1f} s, "
                f"train {info['train_tokens_per_s']:.0f} tok/s, eval {info['eval_tokens_per_s']:.0f} tok/s"
            )
        else:
            click.echo(f"{cid} FAILED: {info}")

    summary = run_study(
        study_dir,
        settings,
        engine=engine,
        workers=workers,
        force=force,
        retry_failed=retry_failed,
        limit=limit,
        only=[c.strip() for c in only.split(",") if c.strip()] if only else None,
        ray_address=ray_address,
        cpus_per_task=cpus_per_task,
        gpus_per_task=gpus_per_task,
        progress=progress_enabled(quiet),
        on_result=report,
        log_phases=phases_without_bars(quiet),
    )
    click.echo(
        f"{len(summary.done)} done, {len(summary.failed)} failed, {summary.skipped} already "
        f"recorded, in {summary.seconds:.1f} s (configuration {summary.config})"
    )


@study_group.command("baseline")
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@training_options(device_flag="--device")
@click.option("--force", is_flag=True, help="Evaluate again even if a baseline is recorded.")
def baseline_command(study_dir: Path, base_model: str, force: bool, **options: Any) -> None:
    """Evaluate the base model on D_eval before any finetuning; record it beside the results.

    Give the training options of the `study run` it belongs to: the baseline is
    kept per configuration, and `study status` shows it next to the candidates'
    losses (how far finetuning moved the model at all).
    """
    from instructmining.experiments.runner import evaluate_baseline

    settings = run_settings(base_model, **options)
    row, computed = evaluate_baseline(
        study_dir,
        settings,
        force=force,
        log=phase_logger(),
    )
    how = f"in {row['eval_s']:.0f} s" if computed else "recorded earlier"
    click.echo(
        f"base model {row['base_model']} before finetuning: eval_loss {row['eval_loss']:.4f} "
        f"over {row['eval_tokens']} response tokens ({how}; configuration {row['config']})"
    )


@study_group.command("status")
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="One line per candidate.")
@click.option(
    "--config",
    default=None,
    help="Training configuration to show (default: the one with the most finished candidates).",
)
def status_command(study_dir: Path, verbose: bool, config: str | None) -> None:
    """Show done / pending / failed candidates with their timings, and each comparison's progress."""
    from instructmining.experiments.compare import comparison_progress
    from instructmining.experiments.fitting import main_config
    from instructmining.experiments.store import ResultsStore
    from instructmining.experiments.study import Study

    study = Study(study_dir)
    configs = ResultsStore(study.results_path).configs()
    chosen = main_config(study) if config is None else config
    if config is not None and config not in configs:
        from instructmining.errors import InputError

        known = ", ".join(f"{c or '(unnamed)'}" for c in configs) or "none yet"
        raise InputError(f"--config {config}: no results for it in {study.path}; known: {known}")
    if len(configs) > 1 or config is not None:
        for c, (d, f) in configs.items():
            mark = "*" if c == chosen else " "
            click.echo(f"{mark} configuration {c or '(unnamed)'}: {d} done, {f} failed")
    entries = ResultsStore(study.results_path, chosen).entries()
    done = [e for e in entries.values() if e.status == "done"]
    failed = [e for e in entries.values() if e.status == "failed"]
    ids = [c["candidate_id"] for c in study.candidates]
    pending = [c for c in ids if c not in entries]
    walls = [e.wall_s for e in done if e.wall_s is not None]
    click.echo(f"{study.path}: {len(ids)} candidates")
    line = f"  done     {len(done)}"
    if walls:
        line += (
            f"  (total {sum(walls):.1f} s, mean {sum(walls) / len(walls):.1f} s, "
            f"min {min(walls):.1f} s, max {max(walls):.1f} s)"
        )
    click.echo(line)
    click.echo(f"  failed   {len(failed)}")
    line = f"  pending  {len(pending)}"
    if pending and walls:
        recent = sorted(done, key=lambda e: e.finished)[-5:]  # the machine as it runs now
        typical = statistics.median(e.wall_s for e in recent if e.wall_s is not None)
        hours = typical * len(pending) / 3600
        line += (
            f"  (about {hours:.1f} h one at a time, at the median {typical:.0f} s "
            f"of the last {len(recent)} finished)"
        )
    click.echo(line)
    base = ResultsStore(study.results_path, chosen).baseline()
    if base is not None:
        losses = [e.row["eval_loss"] for e in done if e.row and "eval_loss" in e.row]
        spread = f"; candidates {min(losses):.4f} to {max(losses):.4f}" if losses else ""
        click.echo(f"  baseline eval_loss {base['eval_loss']:.4f} before finetuning{spread}")
    for cmp in comparison_progress(study.path):
        line = f"  compare {cmp['folder'].name}: {cmp['done']}"
        if cmp["planned"]:
            line += f" of {cmp['planned']} runs done ({', '.join(cmp['strategies'])}; {cmp['seeds']} seeds)"
        else:
            line += " runs done"
        if cmp["failed"]:
            line += f", {cmp['failed']} failed"
        if cmp["left_s"] is not None:
            line += f"; about {cmp['left_s'] / 3600:.1f} h left at each strategy's median run"
        click.echo(line)
        if cmp["summary"] is not None:
            click.echo(f"    tables: {cmp['summary']}")
    if verbose:
        for cid in ids:
            e = entries.get(cid)
            if e is None:
                click.echo(f"  {cid}  pending")
            elif e.status == "done" and e.row:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.finished))
                click.echo(
                    f"  {cid}  done     eval_loss {e.row.get('eval_loss', float('nan')):.4f}  "
                    f"{e.wall_s or 0:.1f} s  {when}Z"
                )
            else:
                click.echo(f"  {cid}  failed   {e.error}")
    elif failed:
        for e in failed:
            click.echo(f"  {e.candidate_id}  failed: {e.error}")


@study_group.command("export")
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV or Parquet file (default: STUDY_DIR/results.csv).",
)
def export_command(study_dir: Path, output: Path | None) -> None:
    """Write every finished row of every configuration to one table (e.g. to commit it).

    `instructmining fit` reads the table as it is; `study fit` fits one configuration.
    """
    import pandas as pd

    from instructmining.experiments.store import ResultsStore
    from instructmining.experiments.study import Study
    from instructmining.writers import write_rows

    study = Study(study_dir)
    frames = []
    for config in ResultsStore(study.results_path).configs():
        table = ResultsStore(study.results_path, config).table()
        if not table.empty:
            frames.append(table.assign(config=config))
    if not frames:
        raise click.ClickException(f"{study_dir}: no finished candidates yet")
    table = pd.concat(frames, ignore_index=True)
    path = write_rows(table, output or study.path / "results.csv", overwrite=True)
    click.echo(f"{len(table)} rows from {len(frames)} configuration(s) -> {path}")


@study_group.command("fit")
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--features",
    default=None,
    metavar="NAMES",
    help="Indicator columns to consider (default: all).",
)
@click.option(
    "--config",
    default=None,
    help="The training configuration to fit (see `study status`); default: the one with "
    "the most finished candidates.",
)
@click.option(
    "--name",
    default=None,
    help="Name of the rule [default: 'study FOLDER']; a rule shipped in "
    "regression/rules/ is named as its file.",
)
@click.option(
    "--add-indicators",
    default=None,
    metavar="NAMES",
    help="Indicators outside the plan to score on the finished candidates now and offer to "
    "the fit (e.g. log_perplexity, which reuses the study's cached perplexity).",
)
@bootstrap_option(default=200)
@model_option
@overwrite_option
def fit_command(
    study_dir: Path,
    features: str | None,
    overwrite: bool,
    config: str | None,
    add_indicators: str | None,
    name: str | None,
    bootstrap: int,
    models: dict[str, str],
) -> None:
    """Fit the loss rule on STUDY_DIR's results; writes STUDY_DIR/fit/rule.json and a report."""
    from instructmining.experiments.fitting import fit_study

    names = [f.strip() for f in features.split(",") if f.strip()] if features else None
    added = [f.strip() for f in (add_indicators or "").split(",") if f.strip()]
    fit = fit_study(
        study_dir,
        features=names,
        overwrite=overwrite,
        config=config,
        add_indicators=added,
        name=name,
        models=models,
        bootstrap=bootstrap,
    )
    click.echo(
        f"fitted on {fit.n_rows} candidates of configuration {fit.config or '(unnamed)'}; "
        f"rule: {fit.rule_path}; report in {fit.folder}"
    )
    summary = getattr(fit.result, "summary", None)
    if callable(summary):
        click.echo(str(summary()))
