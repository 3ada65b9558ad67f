"""Select from a data file and write the subset (with its source fields) and the scores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructmining.readers import OnError, read_records
from instructmining.regression import Rule
from instructmining.selection.select import (
    Selection,
    check_within_range,
    rule_settings,
    select,
)
from instructmining.writers import check_output, rejects_path, write_json, write_rows


@dataclass
class SelectReport:
    """What `select_file` wrote and a summary of the choice."""

    output: Path
    scores_path: Path | None
    n_pool: int
    n_selected: int
    selection: Selection
    rejects_path: Path | None = None
    n_rejects: int = 0

    def summary(self) -> dict[str, Any]:
        """Mean of every numeric score column over the pool and over the selected subset."""
        frame = self.selection.scores
        numeric = [
            c
            for c in frame.columns
            if c not in ("id", "rank", "selected") and frame[c].dtype.kind in "fi"
        ]
        chosen = frame[frame["selected"]]
        return {
            c: {"pool": float(frame[c].mean()), "selected": float(chosen[c].mean())}
            for c in numeric
        }


def select_file(
    data: str | Path,
    output: str | Path,
    *,
    rule: Rule | None = None,
    scores_out: str | Path | None = None,
    field_map: str | Mapping[str, str] | None = None,
    on_error: OnError = "raise",
    overwrite: bool = False,
    **options: Any,
) -> SelectReport:
    """Read `data`, run `select` (see its options), write the subset and the scores atomically."""
    if rule is not None and options.get("strategy", "rule") == "rule":
        rule_settings(rule)  # a refused setting in the rule fails before any data is read
    if options.get("within_range"):
        check_within_range(rule, strategy=options.get("strategy", "rule"))
    out = check_output(output, overwrite=overwrite, inputs=[data])
    scores_path = (
        check_output(scores_out, overwrite=overwrite, inputs=[data])
        if scores_out is not None
        else None
    )
    result = read_records(data, field_map=field_map, on_error=on_error)
    chosen = select(result.records, rule, **options)
    rejects = None
    if result.rejects:
        rejects = rejects_path(out)
        write_rows([r.to_dict() for r in result.rejects], rejects, overwrite=True, inputs=[data])
    subset = chosen.subset(result.records)
    write_rows([dict(r.fields) for r in subset], out, overwrite=overwrite, inputs=[data])
    if scores_path is not None:
        write_rows(chosen.scores, scores_path, overwrite=overwrite, inputs=[data])
    report = SelectReport(
        out, scores_path, len(result.records), len(subset), chosen, rejects, len(result.rejects)
    )
    write_json(
        {
            "source": str(data),
            "pool": report.n_pool,
            "selected": report.n_selected,
            "settings": chosen.settings,
            "rejected_for_diversity": chosen.rejected_for_diversity,
            "rule": rule.to_dict() if rule is not None else None,
            "means": report.summary(),
            "range_check": chosen.range_check,
            "range_warnings": chosen.range_warnings,
            "within_range_swaps": chosen.range_swaps,
        },
        out.with_name(out.name + ".selection.json"),
    )
    return report
