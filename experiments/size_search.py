"""Search the subset size that minimises the evaluation loss of a ranked pool.

The pool is ranked once by a strategy (default: the rule; any strategy whose
choice of s records is the first s of its choice of more, see
`Strategy.nested`); a size s means "finetune on the top s". A strategy that is
not nested (rule-in-range: the rule's ranking kept inside its fitted range)
chooses every size's subset on its own.
Sizes are searched on a log scale within a budget of finetuning runs: half the
budget on a log-spaced grid (the loss-vs-size curve can have several minima:
the paper reports a double descent), the rest on a golden-section search
inside the bracket around the best grid point. Every evaluated size is stored,
so an interrupted search resumes without re-running a size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import DataError, ParameterError
from instructmining.experiments.compare import _fingerprint, choose_subset
from instructmining.experiments.evalset import remove_overlap
from instructmining.experiments.lock import holds_study_lock
from instructmining.experiments.runner import (
    RunSettings,
    prepare_base,
    resolve_settings,
    train_and_evaluate,
)
from instructmining.experiments.store import ResultsStore
from instructmining.experiments.study import Study
from instructmining.records import Record
from instructmining.regression import Rule
from instructmining.selection import select
from instructmining.selection.dedup import DedupSettings
from instructmining.selection.ranges import RangeInfeasibleError
from instructmining.selection.strategies import Strategy, parse
from instructmining.writers import write_json, write_rows

_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass
class SizeSearch:
    """The evaluated sizes (a curve), the best size, its subset and the ranked pool."""

    curve: Any  # DataFrame: size, eval_loss, phase (grid/golden), order of evaluation
    best_size: int
    ranked: list[Record]  # the pool best first (a nested strategy); [] for rule-in-range
    folder: Path
    #: the records searched (the pool less its D_eval overlap)
    pool_size: int = 0
    #: the best size's subset when subsets are not nested (else the top of `ranked`)
    chosen: list[Record] | None = None
    #: records left out before the search as duplicates of a kept one (`dedup`)
    duplicates_dropped: int = 0

    @property
    def subset(self) -> list[Record]:
        """The best size's records."""
        return self.chosen if self.chosen is not None else self.ranked[: self.best_size]


def grid_sizes(low: int, high: int, count: int) -> list[int]:
    """`count` distinct integer sizes spaced evenly in log between `low` and `high`."""
    if count <= 1 or low == high:
        return [high]
    raw = np.exp(np.linspace(math.log(low), math.log(high), count))
    return sorted({round(float(x)) for x in raw})


def search_sizes(
    evaluate: Callable[[int], float], low: int, high: int, budget: int
) -> dict[int, float]:
    """Evaluate at most `budget` distinct sizes in [low, high]; returns size -> loss."""
    if budget < 1:
        raise ParameterError(f"The 'budget' parameter must be >= 1. Got {budget} instead.")
    losses: dict[int, float] = {}

    def f(size: int) -> float:
        if size not in losses:
            losses[size] = evaluate(size)
        return losses[size]

    grid = grid_sizes(low, high, max(2, budget // 2 + budget % 2) if budget >= 2 else 1)
    for s in grid[:budget]:
        f(s)
    # golden-section on log size inside the bracket around the best grid point
    ordered = sorted(losses)
    best = min(ordered, key=lambda s: (losses[s], s))
    i = ordered.index(best)
    a = math.log(ordered[max(i - 1, 0)])
    b = math.log(ordered[min(i + 1, len(ordered) - 1)])
    while len(losses) < budget and round(math.exp(b)) - round(math.exp(a)) > 1:
        c = b - _GOLDEN * (b - a)
        d = a + _GOLDEN * (b - a)
        sc, sd = round(math.exp(c)), round(math.exp(d))
        if sc == sd:
            f(sc)
            break
        fc = f(sc)
        if len(losses) >= budget:
            break
        fd = f(sd)
        if fc <= fd:
            b = d
        else:
            a = c
    return losses


@holds_study_lock("select --size auto")
def size_search(
    study_path: str | Path,
    pool: Sequence[Record],
    rule: Rule | None,
    *,
    strategy: str | Strategy = "rule",
    seed: int = 0,
    budget: int = 8,
    min_size: int = 100,
    max_size: int | None = None,
    settings: RunSettings,
    models: dict[str, str] | None = None,
    progress: bool = False,
    on_result: Callable[[int, float], None] | None = None,
    dedup: DedupSettings | None = None,
) -> SizeSearch:
    """Rank `pool` by `strategy` (with `rule` and `seed`) and search the best top-s size.

    See the module docstring. A strategy whose subsets are not nested (rule-in-range)
    chooses each size's subset anew; a size it cannot keep inside the rule's fitted
    range is left out of the curve (its loss counts as infinite in the search).
    With `dedup`, one record of every duplicate cluster is kept before the search (the
    one `select --dedup` keeps), so every size is chosen from the same de-duplicated pool.
    """
    import pandas as pd

    ranker = parse(strategy, option="--strategy")
    ranker.check(rule)
    study = Study(study_path)
    kept, removed = remove_overlap({"pool": list(pool)}, study.eval_records)
    records = kept["pool"]
    dropped = 0
    if dedup is not None and records:
        records, dropped = _keep_one_per_cluster(
            records, rule, ranker, dedup, seed=seed, models=models, cache=study.cache_dir
        )
    n = len(records)
    high = n if max_size is None else min(max_size, n)
    low = min(max(1, min_size), high)
    if high < 1:
        raise DataError("the pool is empty after removing records that overlap D_eval")

    def choose(k: int) -> list[Record]:
        with warnings.catch_warnings():  # a +diverse:COS ranking keeps fewer than n: expected
            warnings.filterwarnings("ignore", message="the diversity threshold")
            return choose_subset(
                ranker, records, rule, size=k, seed=seed, models=models, cache=study.cache_dir
            )

    ranked = choose(n) if ranker.nested else []
    if ranker.nested:
        high = min(high, len(ranked))  # a +diverse:COS ranking may keep fewer records
    low = min(low, high)
    base = prepare_base(study, settings, progress=progress)
    settings = resolve_settings(settings, base)
    # nested: the ranking says everything about the subsets; otherwise the pool and
    # the strategy do (each size's subset is kept in subsets/size-S.json)
    key = _fingerprint(
        [r.id for r in ranked] if ranker.nested else [sorted(r.id for r in records), ranker.name],
        rule.to_dict() if rule is not None else None,
        settings.base_model,
        settings.train.key(),
    )
    folder = study.path / "size_search" / key
    folder.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(folder / "sizes.sqlite")
    stored = {
        int(e.row["size"]): float(e.row["eval_loss"])
        for e in store.entries().values()
        if e.status == "done" and e.row
    }
    phase: dict[int, int] = {}
    infeasible: set[int] = set()
    chosen: dict[int, list[Record]] = {}  # a non-nested strategy's subsets, by size

    def subset_of(size: int) -> list[Record]:
        if ranker.nested:
            return ranked[:size]
        if size not in chosen:
            chosen[size] = choose(size)
            (folder / "subsets").mkdir(exist_ok=True)
            write_json([r.id for r in chosen[size]], folder / "subsets" / f"size-{size}.json")
        return chosen[size]

    def evaluate(size: int) -> float:
        phase[size] = len(phase)
        if size in stored:
            return stored[size]
        try:
            subset = subset_of(size)
        except RangeInfeasibleError:  # too many records to stay in range: skip it
            infeasible.add(size)
            if on_result:
                on_result(size, math.nan)  # NaN: left out, no model trained
            return math.inf
        row = train_and_evaluate(base, subset, study.eval_records, settings, progress=progress)
        row["size"] = size
        store.record_done(f"size-{size}", row)
        if on_result:
            on_result(size, row["eval_loss"])
        return float(row["eval_loss"])

    losses = search_sizes(evaluate, low, high, budget)
    losses = {size: loss for size, loss in losses.items() if size not in infeasible}
    if not losses:
        raise RangeInfeasibleError(
            f"no size searched in [{low}, {high}] keeps the subset inside the rule's fitted "
            "range; lower --min-size, or search without --within-range"
        )
    best = min(losses, key=lambda s: (losses[s], s))
    curve = pd.DataFrame(
        {
            "size": sorted(losses),
            "eval_loss": [losses[s] for s in sorted(losses)],
            "evaluated_as": [phase[s] + 1 for s in sorted(losses)],
        }
    )
    write_rows(curve, folder / "curve.csv", overwrite=True)
    write_json(
        {
            "pool": n,
            "removed_eval_overlap": removed["pool"],
            "duplicates_dropped": dropped,
            "budget": budget,
            "range": [low, high],
            "best_size": best,
            "best_loss": losses[best],
            "left_out_out_of_range": sorted(infeasible),
            "strategy": ranker.name,
            "rule": rule.name if rule is not None else None,
            "base_model": settings.base_model,
        },
        folder / "search.json",
    )
    _plot(curve, best, folder / "curve.png")
    return SizeSearch(
        curve,
        best,
        ranked,
        folder,
        pool_size=n,
        chosen=None if ranker.nested else subset_of(best),
        duplicates_dropped=dropped,
    )


def _keep_one_per_cluster(
    records: Sequence[Record],
    rule: Rule | None,
    ranker: Strategy,
    dedup: DedupSettings,
    *,
    seed: int,
    models: Mapping[str, str] | None,
    cache: str | Path | None,
) -> tuple[list[Record], int]:
    """The pool with one record per duplicate cluster, in pool order; and how many left.

    The record kept is the one `select --dedup` keeps with this strategy: the
    cluster's first in the rule's ranking when the strategy needs the rule, else
    its lowest id. (rule-in-range's whole-pool choice may not exist, so its
    clusters are resolved by the plain rule's ranking: the same order.)
    """
    orderer = ranker if ranker.nested else parse("rule")
    picked = select(
        records,
        rule if orderer.uses_rule else None,
        fraction=1.0,
        strategy=orderer,
        seed=seed,
        dedup=dedup,
        models=models,
        cache=cache,
    )
    # by position: exact copies share an id, and only the dropped copy may go
    keep = picked.scores["duplicate_of"].isna().to_numpy()
    return [r for r, kept in zip(records, keep, strict=True) if kept], picked.duplicates_dropped


def _plot(curve: Any, best: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from instructmining.writers import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["size"], curve["eval_loss"], "o-", color="tab:blue")
    ax.axvline(best, color="tab:red", linestyle="--", label=f"best size {best}")
    ax.set_xscale("log")
    ax.set_xlabel("subset size (top records by the rule)")
    ax.set_ylabel("evaluation loss")
    ax.set_title("Evaluation loss against selected subset size")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
