"""Select from a data file and write the subset (with its source fields) and the scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructmining.readers import OnError, read_records
from instructmining.records import Record
from instructmining.regression import Rule
from instructmining.selection.contamination import (
    ContaminationReport,
    ContaminationSettings,
    find_contamination,
    read_eval_files,
)
from instructmining.selection.select import (
    Selection,
    resolve_strategy,
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
    #: what --exclude-eval found (records dropped before ranking), when asked
    contamination: ContaminationReport | None = None
    #: the records ranked (the pool after --exclude-eval), aligned with `selection.scores`
    pool: list[Record] = field(default_factory=list)

    @property
    def n_excluded(self) -> int:
        """Records dropped before ranking as overlapping an evaluation set."""
        return len(self.contamination.contaminated) if self.contamination is not None else 0

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
    exclude_eval: Sequence[str | Path] = (),
    contamination: ContaminationSettings | None = None,
    **options: Any,
) -> SelectReport:
    """Read `data`, run `select` (see its options), write the subset and the scores atomically.

    With `exclude_eval` (evaluation files), records overlapping any of them
    (`contamination.find_contamination` with `contamination` settings) are dropped
    before ranking; `SelectReport.contamination` says which and why.
    """
    # an unknown strategy, a missing rule or a refused setting in it fail before any data is read
    _, strategy = resolve_strategy(
        options.get("strategy", "rule"),
        rule,
        diversity=options.get("diversity"),
        within_range=bool(options.get("within_range")),
    )
    if rule is not None and strategy.uses_rule:
        rule_settings(rule)
    out = check_output(output, overwrite=overwrite, inputs=[data])
    scores_path = (
        check_output(scores_out, overwrite=overwrite, inputs=[data])
        if scores_out is not None
        else None
    )
    evalset = read_eval_files(exclude_eval, option="--exclude-eval") if exclude_eval else None
    result = read_records(data, field_map=field_map, on_error=on_error)
    pool = result.records
    found = None
    if evalset is not None:
        from instructmining.progress import progress_bar

        with progress_bar(
            len(pool), "contamination", enabled=options.get("progress", False)
        ) as bar:
            found = find_contamination(
                pool,
                evalset.records,
                evalset.origin,
                contamination,
                parts=evalset.parts,
                on_progress=bar.update,
            )
        dropped = set(found.contaminated)
        pool = [r for i, r in enumerate(pool) if i not in dropped]
    chosen = select(pool, rule, **options)
    rejects = None
    if result.rejects:
        rejects = rejects_path(out)
        write_rows([r.to_dict() for r in result.rejects], rejects, overwrite=True, inputs=[data])
    subset = chosen.subset(pool)
    write_rows([dict(r.fields) for r in subset], out, overwrite=overwrite, inputs=[data])
    if scores_path is not None:
        write_rows(chosen.scores, scores_path, overwrite=overwrite, inputs=[data])
    report = SelectReport(
        out,
        scores_path,
        len(result.records),
        len(subset),
        chosen,
        rejects,
        len(result.rejects),
        found,
        pool,
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
            "excluded_eval": (
                {
                    "files": [str(p) for p in exclude_eval],
                    "dropped": report.n_excluded,
                    "dropped_ids": [result.records[i].id for i in found.contaminated],
                    **found.summary(),
                }
                if found is not None
                else None
            ),
            "duplicates_dropped": chosen.duplicates_dropped,
            "duplicate_clusters": chosen.duplicate_clusters,
        },
        out.with_name(out.name + ".selection.json"),
    )
    return report
