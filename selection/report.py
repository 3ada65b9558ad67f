"""The page of a selection (`select --report DIR`): pool and subset on the same plots.

It shows the columns the selection computed (the rule's indicators and its
prediction). A baseline strategy computes none, so the page then computes the
two length indicators (no model, no cache) to compare pool and subset on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from instructmining.indicators.engine import describe_backend, score_records
from instructmining.indicators.report import render_page, write_page
from instructmining.regression import Rule
from instructmining.selection.run import SelectReport

#: score columns that are bookkeeping, not values to plot
_NOT_PLOTTED = ("id", "rank", "selected", "duplicate_of")
#: what the page computes when the strategy computed no indicator
FALLBACK = ("input_length", "output_length")


def plotted_columns(frame: Any) -> list[str]:
    """The numeric value columns of a selection's scores (predicted_loss only without its log)."""
    cols = [c for c in frame.columns if c not in _NOT_PLOTTED and frame[c].dtype.kind in "fi"]
    if "predicted_log_loss" in cols and "predicted_loss" in cols:
        cols.remove("predicted_loss")  # the same ranking, on another scale
    return cols


def write_select_report(
    report: SelectReport,
    directory: str | Path,
    *,
    rule: Rule | None = None,
    models: Mapping[str, str] | None = None,
    source: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write DIR/index.html for a `select_file` run; `models` as given to select (--model)."""
    from instructmining.indicators.profiles import expand_models
    from instructmining.indicators.registry import registered

    chosen = report.selection
    frame = chosen.scores.copy()
    columns = plotted_columns(frame)
    notes: list[str] = []
    computed_by: dict[str, str] = {}
    if rule is not None:
        given = expand_models(dict(models or {}))
        for name in rule.features:
            params = dict(rule.indicators.get(name) or {"name": name})
            if name in given:
                params["model"] = given[name]
            computed_by[name] = describe_backend(params).strip() or "as stored in the rule"
        for name in ("predicted_log_loss", "predicted_loss"):
            computed_by[name] = f"rule {rule.name}"
        if any(name in columns for name in rule.features):
            notes.append(
                f"select computes only the indicators the rule uses: {', '.join(rule.features)}."
            )
    for name, params in chosen.column_indicators.items():  # top:IND / bottom:IND
        computed_by.setdefault(name, describe_backend(params).strip() or name)
    if not any(c in registered() or c.startswith("predicted_") for c in columns):
        extra = score_records(report.pool, list(FALLBACK))
        for name in FALLBACK:
            frame[name] = extra.columns[name]
            computed_by[name] = describe_backend(extra.indicators[name])
        columns = [*FALLBACK, *columns]
        notes.append(
            f"The {chosen.strategy} strategy computes no indicator; "
            f"{' and '.join(FALLBACK)} were computed for this page."
        )
    counts = [
        ("data", str(source) if source is not None else "–"),
        ("records read", str(report.n_pool)),
        ("rows rejected (--on-error skip)", str(report.n_rejects)),
        ("dropped as overlapping the evaluation set", str(report.n_excluded)),
        ("dropped as duplicates", str(chosen.duplicates_dropped)),
        ("skipped as too similar (--diversity)", str(chosen.rejected_for_diversity)),
        ("selected", str(report.n_selected)),
        ("strategy", str(chosen.strategy)),
        ("rule", rule.name if rule is not None else "–"),
        ("subset file", str(report.output)),
    ]
    counts += [("warning", message) for message in chosen.range_warnings]
    name = Path(source).name if source is not None else report.output.name
    text = render_page(
        f"Selection from {name}",
        frame,
        report.pool,
        columns,
        selected=frame["selected"].to_numpy(dtype=bool),
        counts=counts,
        computed_by=computed_by,
        notes=notes,
    )
    return write_page(directory, text, overwrite=overwrite)
