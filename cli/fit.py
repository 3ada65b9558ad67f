"""`instructmining fit` (an experiment table to a rule) and `instructmining rule show`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import bootstrap_option, overwrite_option


def _split(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("give at least one column name", ctx, param)
    return names


def _default_features(columns: list[str], table: Path) -> list[str]:
    """Every registered indicator name that is a column of the table, in the table's order."""
    from instructmining.errors import DataError
    from instructmining.indicators.registry import registered

    names = set(registered())
    found = [c for c in columns if c in names]
    if not found:
        raise DataError(
            f"{table}: no column is named after a registered indicator "
            f"({', '.join(sorted(names))}); name the indicator columns with --features"
        )
    return found


def _echo_warnings(caught: list[warnings.WarningMessage]) -> None:
    seen: set[str] = set()
    for w in caught:
        text = str(w.message)
        if text in seen:
            continue
        seen.add(text)
        click.echo(f"Warning: {text}", err=True)


@click.command("fit")
@click.argument("table", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Rule file (.json)."
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    help="Folder for report.md and PNG plots (created if missing).",
)
@click.option("--loss", default="eval_loss", show_default=True, help="The loss column.")
@click.option(
    "--features",
    callback=_split,
    help="Comma-separated indicator columns [default: every registered indicator name "
    "that is a column].",
)
@click.option(
    "--target-transform",
    type=click.Choice(["log", "none"]),
    default="log",
    show_default=True,
    help="Fit log(loss), as the paper does, or the raw loss.",
)
@click.option(
    "--method",
    type=click.Choice(["stepwise", "best-subset", "all"]),
    default="stepwise",
    show_default=True,
    help="Stepwise selection, exhaustive best subset (at most 15 candidates), or all features.",
)
@click.option(
    "--direction",
    type=click.Choice(["forward", "backward", "both"]),
    default="both",
    show_default=True,
)
@click.option(
    "--criterion",
    type=click.Choice(["pvalue", "aic", "bic"]),
    default="pvalue",
    show_default=True,
    help="What decides a stepwise step.",
)
@click.option(
    "--enter",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.05,
    show_default=True,
    help="p-value below which a variable enters.",
)
@click.option(
    "--remove",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.10,
    show_default=True,
    help="p-value above which a variable leaves.",
)
@click.option(
    "--rank-by",
    type=click.Choice(["bic", "aic", "adj_r2"]),
    default="bic",
    show_default=True,
    help="How best-subset ranks models.",
)
@click.option(
    "--standardize", is_flag=True, help="Standardise indicators (z-scores) before fitting."
)
@click.option(
    "--dropna", is_flag=True, help="Leave out rows with missing values instead of failing."
)
@click.option(
    "--cv-folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Folds of the k-fold cross-validation.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the fold split and the bootstrap resamples.",
)
@bootstrap_option(default=0)
@click.option("--name", help="Name of the rule [default: fitted-TABLE].")
@overwrite_option
def fit_command(
    table: Path,
    output: Path,
    report_dir: Path | None,
    loss: str,
    features: list[str] | None,
    target_transform: str,
    method: str,
    direction: str,
    criterion: str,
    enter: float,
    remove: float,
    rank_by: str,
    standardize: bool,
    dropna: bool,
    cv_folds: int,
    seed: int,
    bootstrap: int,
    name: str | None,
    overwrite: bool,
) -> None:
    """Fit a rule predicting a finetuned model's loss from the mean indicators in TABLE.

    TABLE (.csv or .parquet) has one row per finetuned dataset, one column per
    indicator (the dataset's mean value) and a loss column. Writes the rule as
    JSON to OUTPUT and, with --report, a report with plots.

    \b
    Examples:
      instructmining fit results.csv -o rule.json --report fit-report
      instructmining fit results.csv -o rule.json --features reward,mtld --method best-subset
    """
    from instructmining.errors import InstructMiningError, OutputExistsError, ParameterError
    from instructmining.regression import fit_rule
    from instructmining.regression.table import read_table, table_metadata
    from instructmining.writers import check_output, check_writable

    if output.suffix.lower() != ".json":
        raise click.BadParameter("the rule is written as JSON; give a .json file", param_hint="-o")
    check_output(output, overwrite=overwrite, inputs=[table])
    if report_dir is not None:
        if (report_dir / "report.md").exists() and not overwrite:
            raise OutputExistsError(
                f"{report_dir / 'report.md'}: exists already; pass --overwrite to replace it"
            )
        check_writable(report_dir)
    frame = read_table(table)
    columns = [str(c) for c in frame.columns]
    chosen = features if features is not None else _default_features(columns, table)
    meta = table_metadata(table).get("indicators")
    indicators: dict[str, Any] | None = meta if isinstance(meta, dict) else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fit_rule(
                frame,
                features=chosen,
                loss=loss,
                target_transform=target_transform,
                method=method,
                direction=direction,
                criterion=criterion,
                enter=enter,
                remove=remove,
                rank_by=rank_by,
                standardize=standardize,
                dropna=dropna,
                cv_folds=cv_folds,
                seed=seed,
                bootstrap=bootstrap,
                indicators=indicators,
                name=name,
                source=table,
            )
        except InstructMiningError:
            _echo_warnings(caught)
            raise
        except ValueError as exc:  # a bad combination of settings
            _echo_warnings(caught)
            raise ParameterError(str(exc)) from None
    _echo_warnings(caught)
    result.rule.save(output, overwrite=overwrite)
    click.echo(result.rule.summary())
    s = result.rule.statistics
    click.echo(
        f"\nleave-one-out RMSE {s['loo_rmse']:.4g} (intercept only: {s['baseline_loo_rmse']:.4g})"
    )
    click.echo(f"rule -> {output}")
    if report_dir is not None:
        report = result.write_report(report_dir, overwrite=overwrite)
        click.echo(f"report -> {report}")


@click.group("rule")
def rule_group() -> None:
    """Inspect rules: fitted JSON files or the built-in ones (`instructmining rule list`)."""


@rule_group.command("list")
def rule_list_command() -> None:
    """List the built-in rules: where each comes from, its base model and its features."""
    from instructmining.regression import BUILTIN_RULES, builtin_rule

    rows = [("name", "source", "base model", "features")]
    for name in BUILTIN_RULES:
        rule = builtin_rule(name)
        prov = rule.provenance
        study = prov.get("study")
        if isinstance(study, dict):  # a rule this project fitted on one of its studies
            source = f"study {study.get('folder')} ({study.get('candidates')} candidates)"
            base = str(study.get("base_model", ""))
        else:
            source = str(prov.get("paper") or prov.get("source", ""))
            base = str(prov.get("base_model", ""))
        rows.append((name, source, base, ", ".join(rule.coefficients)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])


@rule_group.command("show")
@click.argument("rule")
@click.option("--json", "as_json", is_flag=True, help="Print the rule's JSON document.")
def rule_show_command(rule: str, as_json: bool) -> None:
    """Print RULE (a rule .json file, or a built-in name from `instructmining rule list`)."""
    from instructmining.regression import load_rule

    loaded = load_rule(rule)
    click.echo(loaded.to_json() if as_json else loaded.summary(), nl=not as_json)
