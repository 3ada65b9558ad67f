"""`instructmining study compare`: subsets chosen by the rule and by baselines, finetuned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import (
    map_option,
    model_option,
    phases_without_bars,
    quiet_option,
    run_settings,
    training_options,
)


@click.command("compare")
@click.argument("study_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--pool",
    "pool_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The data to select from.",
)
@click.option("-r", "--rule", "rule_spec", required=True, metavar="RULE.json|paper-v1|paper-v3")
@click.option("--size", type=click.IntRange(min=1), default=None, help="K: records per subset.")
@click.option(
    "--tokens",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Instead of --size: an equal budget of N response tokens per subset (as trained, "
    "after the max-length cut); each strategy keeps as many of its records as fit.",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Finetuning seeds (and random subsets) per strategy.",
)
@click.option(
    "--strategies",
    default="rule,random,longest",
    show_default=True,
    metavar="NAME,...",
    help="Comma-separated strategy names, as `select --strategy` takes them: rule, "
    "rule-in-range, random, longest, top:IND, bottom:IND (IND: one of the study's "
    "indicators), kcenter or a plugin's, each optionally ending in +diverse:COS.",
)
@click.option(
    "--by",
    default=None,
    metavar="FIELD",
    help="A field of the pool's rows (e.g. dolly's category): table the share of each of "
    "its values among every strategy's records.",
)
@training_options(seed=False)
@model_option
@map_option
@quiet_option
def compare_command(
    study_dir: Path,
    pool_path: Path,
    rule_spec: str,
    size: int | None,
    tokens: int | None,
    seeds: int,
    strategies: str,
    base_model: str,
    models: dict[str, str],
    field_map: dict[str, str],
    quiet: bool,
    by: str | None,
    **training: Any,
) -> None:
    """Finetune on K records of POOL chosen by each strategy; compare the losses.

    Strategies: rule (the rule's top K), rule-in-range (the rule's ranking with
    the subset means kept inside its fitted range), random (seeded), longest
    (longest outputs), top:IND and bottom:IND (highest / lowest value of the
    study indicator IND, e.g. top:ifd), kcenter (k-center greedy coverage of the
    knn6 embedding space, starting from the rule's best record); NAME+diverse:COS
    skips records too similar to a kept one. Uses the study's D_eval (pool records
    overlapping it are removed), base model and score cache; results go to
    STUDY_DIR/compare/<fingerprint>/ (runs.csv, summary.md, summary.json) with
    each subset's mean of every study indicator and paired differences against
    random, rewritten after every run; a killed comparison resumes where it stopped.

    With --tokens N instead of --size, every subset holds as many of its
    strategy's records as fit into N response tokens, so that choosing long records
    does not win by training on more tokens alone.

    \b
    Examples:
      instructmining study compare study/ --pool dolly.json --rule study/rule.json \\
          --size 1000 --seeds 5 --strategies rule,rule-in-range,random,top:ifd,kcenter
      instructmining study compare study/ --pool dolly.json --rule study/rule.json \\
          --tokens 20000 --seeds 5 --strategies rule,random,longest
    """
    from instructmining.experiments.compare import (
        compare_strategies,
        parse_strategies,
        study_indicator_names,
    )
    from instructmining.experiments.study import Study
    from instructmining.progress import progress_enabled
    from instructmining.readers import read_records
    from instructmining.regression import load_rule

    if (size is None) == (tokens is None):
        raise click.UsageError("give exactly one of --size K (records) and --tokens N")
    # names checked before the pool is read (ParameterError: one line, exit code 2)
    chosen = parse_strategies(strategies.split(","), study_indicator_names(Study(study_dir)))
    try:
        rule = load_rule(rule_spec)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="--rule") from None
    settings = run_settings(base_model, **training)
    pool = read_records(pool_path, field_map=field_map or None).records

    def report(strategy: str, seed: int, info: Any) -> None:
        if isinstance(info, dict):
            click.echo(f"{strategy} seed {seed}: eval_loss {info['eval_loss']:.4f}")
        else:
            click.echo(f"{strategy} seed {seed} FAILED: {info}")

    result = compare_strategies(
        study_dir,
        pool,
        rule,
        size=size,
        tokens=tokens,
        seeds=seeds,
        settings=settings,
        strategies=chosen,
        models=models,
        progress=progress_enabled(quiet),
        on_result=report,
        by=by,
        log=phases_without_bars(quiet),
    )
    click.echo(result.markdown())
    click.echo(f"written to {result.folder}")
