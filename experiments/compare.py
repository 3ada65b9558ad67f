"""Does selection work? Finetune on a rule's top-K, a random K and the longest K of one pool.

Every (strategy, seed) run is one finetuning + evaluation through the study
runner, stored in a results store beside the study so that a killed comparison
resumes. The seed changes the finetuning seed for every strategy and, for the
random strategy, the subset too; the rule's and the longest subsets do not
depend on it. Paired differences compare strategies within a seed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import InstructMiningError
from instructmining.experiments.evalset import remove_overlap
from instructmining.experiments.runner import (
    RunSettings,
    describe_error,
    prepare_base,
    resolve_settings,
    train_and_evaluate,
)
from instructmining.experiments.store import ResultsStore
from instructmining.experiments.study import Study
from instructmining.records import Record
from instructmining.regression import Rule
from instructmining.selection import select
from instructmining.writers import atomic_path, write_json, write_rows

STRATEGIES = ("rule", "random", "longest")


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a Student-t interval for the mean; NaN bounds for one value."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if x.size else math.nan
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


@dataclass
class Comparison:
    """Per-run losses, per-strategy intervals and paired differences."""

    runs: Any  # DataFrame: strategy, seed, eval_loss, ...
    folder: Path

    def per_strategy(self) -> list[dict[str, Any]]:
        """Mean eval loss and its 95% interval for each strategy."""
        out = []
        for strategy, group in self.runs.groupby("strategy", sort=False):
            mean, low, high = mean_interval(group["eval_loss"].tolist())
            out.append(
                {
                    "strategy": strategy,
                    "runs": len(group),
                    "mean_loss": mean,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
        return out

    def paired(self, against: str = "rule") -> list[dict[str, Any]]:
        """Mean of (`against` − other) per seed, with a 95% interval; negative favours `against`."""
        wide = self.runs.pivot(index="seed", columns="strategy", values="eval_loss")
        out = []
        for other in wide.columns:
            if other == against or against not in wide.columns:
                continue
            diff = (wide[against] - wide[other]).dropna()
            mean, low, high = mean_interval(diff.tolist())
            out.append(
                {
                    "difference": f"{against} - {other}",
                    "pairs": len(diff),
                    "mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "wins": int((diff < 0).sum()),
                }
            )
        return out

    def markdown(self) -> str:
        """The two tables as markdown."""
        lines = ["| strategy | runs | mean eval loss | 95% interval |", "|---|---|---|---|"]
        for r in self.per_strategy():
            lines.append(
                f"| {r['strategy']} | {r['runs']} | {r['mean_loss']:.4f} | "
                f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}] |"
            )
        lines += [
            "",
            "| paired difference | pairs | mean | 95% interval | seeds where rule wins |",
            "|---|---|---|---|---|",
        ]
        for r in self.paired():
            lines.append(
                f"| {r['difference']} | {r['pairs']} | {r['mean']:+.4f} | "
                f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['wins']}/{r['pairs']} |"
            )
        return "\n".join(lines) + "\n"


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def compare_strategies(
    study_path: str | Path,
    pool: Sequence[Record],
    rule: Rule,
    *,
    size: int,
    seeds: int = 5,
    settings: RunSettings,
    strategies: Sequence[str] = STRATEGIES,
    models: dict[str, str] | None = None,
    progress: bool = False,
    on_result: Callable[[str, int, dict[str, Any] | str], None] | None = None,
) -> Comparison:
    """Run (or resume) the comparison; results live in STUDY/compare/<fingerprint>/."""
    if seeds < 1:
        raise InstructMiningError(f"--seeds must be >= 1, got {seeds}")
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise InstructMiningError(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    study = Study(study_path)
    kept, removed = remove_overlap({"pool": list(pool)}, study.eval_records)
    records = kept["pool"]
    if size > len(records):
        raise InstructMiningError(
            f"--size {size} exceeds the {len(records)} pool records left after removing "
            f"{removed['pool']} that overlap D_eval"
        )
    base = prepare_base(study, settings, progress=progress)
    settings = resolve_settings(settings, base)
    key = _fingerprint(
        sorted(r.id for r in records),
        rule.to_dict(),
        size,
        settings.base_model,
        settings.train.key(),
        sorted(strategies),
    )
    folder = study.path / "compare" / key
    folder.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(folder / "runs.sqlite")
    done = store.entries()
    subsets: dict[tuple[str, int], list[Record]] = {}
    for strategy in strategies:
        for seed in range(seeds):
            run_id = f"{strategy}-seed{seed}"
            if run_id in done and done[run_id].status == "done":
                continue
            pick_seed = seed if strategy == "random" else 0
            if (strategy, pick_seed) not in subsets:
                chosen = select(
                    records,
                    rule if strategy == "rule" else None,
                    k=size,
                    strategy=strategy,
                    seed=pick_seed,
                    models=models,
                    cache=study.cache_dir,
                )
                subsets[(strategy, pick_seed)] = chosen.subset(records)
            subset = subsets[(strategy, pick_seed)]
            run_settings = replace(settings, train=replace(settings.train, seed=seed))
            try:
                row = train_and_evaluate(
                    base, subset, study.eval_records, run_settings, progress=progress
                )
            except Exception as exc:  # one failed run is recorded; the comparison goes on
                store.record_failed(run_id, describe_error(exc))
                if on_result:
                    on_result(strategy, seed, describe_error(exc))
                continue
            row |= {
                "strategy": strategy,
                "seed": seed,
                "size": size,
                "subset_mean_output_words": float(np.mean([len(r.output.split()) for r in subset])),
            }
            store.record_done(run_id, row)
            if on_result:
                on_result(strategy, seed, row)
    runs = store.table()
    if runs.empty:
        raise InstructMiningError(
            f"no run of the comparison finished; see {folder / 'runs.sqlite'}"
        )
    order = runs["strategy"].map({n: i for i, n in enumerate(STRATEGIES)})
    runs = runs.assign(_order=order).sort_values(["_order", "seed"]).drop(columns="_order")
    result = Comparison(runs.reset_index(drop=True), folder)
    write_rows(result.runs, folder / "runs.csv", overwrite=True)
    with atomic_path(folder / "summary.md") as tmp:
        tmp.write_text(result.markdown(), encoding="utf-8")
    write_json(
        {
            "pool": len(records),
            "removed_eval_overlap": removed["pool"],
            "size": size,
            "seeds": seeds,
            "rule": rule.name,
            "base_model": settings.base_model,
            "per_strategy": result.per_strategy(),
            "paired": result.paired(),
        },
        folder / "summary.json",
    )
    return result
