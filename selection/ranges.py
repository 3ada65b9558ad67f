"""A rule's fitted range during selection: the check after choosing, and `within_range_subset`.

A rule is fitted on candidate datasets, each described by the mean of every
indicator over its records. Outside the span of those means the rule is
extrapolating, and a subset chosen by ranking alone can land far outside it: the
best-ranked records are the extreme ones. `check_subset` reports every rule
indicator whose subset mean lies outside the rule's recorded range;
`within_range_subset` chooses a subset that stays inside while following the
rule's ranking as closely as a greedy swap search can.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from instructmining.errors import InputError
from instructmining.regression import Rule

#: unselected records examined at once when looking for a swap partner
_CHUNK = 1024


class FittedRangeWarning(UserWarning):
    """A subset mean of a rule indicator lies outside the range the rule was fitted on."""


class RangeInfeasibleError(InputError):
    """Within-range selection found no subset whose means all lie in the fitted range (exit 2)."""


def _tolerance(lo: float, hi: float) -> float:
    """Slack for rounding: a mean this close to a bound counts as on it."""
    return 1e-9 * max(hi - lo, abs(lo), abs(hi), 1e-300)


def is_outside(mean: float, lo: float, hi: float) -> bool:
    """Whether `mean` lies outside [lo, hi] by more than rounding (NaN counts as outside)."""
    tol = _tolerance(lo, hi)
    return not (lo - tol <= mean <= hi + tol)


def _number(value: float, *others: float) -> str:
    """`value` with 4 significant digits, more where it would read as equal to one of `others`."""
    for digits in (4, 6, 8, 12, 17):
        text = f"{value:.{digits}g}"
        if all(text != f"{o:.{digits}g}" for o in others):
            return text
    return repr(value)


def range_message(name: str, mean: float, lo: float, hi: float) -> str:
    """The warning for one indicator, e.g. `subset mean input_length 12.3 is outside ...`."""
    return (
        f"subset mean {name} {_number(mean, lo, hi)} is outside the rule's fitted range "
        f"[{_number(lo, mean)}, {_number(hi, mean)}]"
    )


def ranged_features(rule: Rule) -> list[str]:
    """The indicators of the rule that have a recorded fitted range, in formula order."""
    return [f for f in rule.features if f in rule.ranges]


def check_subset(
    rule: Rule,
    frame: Any,
    chosen: Sequence[int] | np.ndarray,
    *,
    own: Mapping[str, Callable[[str, np.ndarray], float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per ranged rule indicator: the subset's mean (NaN values left out), the range, inside?

    `frame` holds one column per indicator and one row per pool record; `chosen`
    are the row positions of the subset. `own` gives, for a set-level indicator
    (knn6), the subset's own value: the range was fitted on candidates' own values,
    and the pool column (each record among the whole pool) is not comparable with it;
    the pool-column mean is kept as `pool_column_mean`.
    """
    rows = np.asarray(chosen, dtype=np.int64)
    report: dict[str, dict[str, Any]] = {}
    for name in ranged_features(rule):
        values = np.asarray(frame[name], dtype=np.float64)[rows]
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if len(finite) else float("nan")
        r = rule.ranges[name]
        entry: dict[str, Any] = {"subset_mean": mean}
        if own and name in own:
            entry = {"subset_mean": own[name](name, rows), "pool_column_mean": mean}
        report[name] = {
            **entry,
            "min": r["min"],
            "mean": r["mean"],
            "max": r["max"],
            "inside": not is_outside(entry["subset_mean"], r["min"], r["max"]),
        }
    return report


def check_messages(check: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One warning line per indicator of `check_subset`'s report that lies outside."""
    return [
        range_message(name, c["subset_mean"], c["min"], c["max"])
        for name, c in check.items()
        if not c["inside"]
    ]


def within_range_subset(
    order: np.ndarray,
    values: np.ndarray,
    lower: Sequence[float],
    upper: Sequence[float],
    size: int,
    names: Sequence[str],
    *,
    max_swaps: int | None = None,
) -> tuple[np.ndarray, int]:
    """The rule's top `size`, repaired by swaps until every mean lies in [lower, upper].

    `order` ranks the pool best first (the rule's order); `values[r, g]` is record
    r's value of indicator g (the columns named by `names`, bounded by `lower` and
    `upper`). Returns the chosen rows, best-ranked first, and the number of swaps.

    The algorithm, greedy and deterministic (it depends on the ranking only, so
    permuting the pool permutes the result):

    1. Start from the first `size` records of `order`.
    2. While some subset mean lies outside its range, take the indicator that is
       furthest out, measured in widths of its range (the first in `names` on a
       tie). Say its mean is below the range (above is symmetric).
    3. The record to remove is the selected one that pushes that mean furthest
       out: the lowest value of the indicator; among equal values, the
       lowest-ranked one.
    4. The record to add is the best-ranked unselected one that has a value for
       every ranged indicator, whose own value lies at or above the lower bound,
       and whose exchange for the removed record keeps every mean that is inside
       its range inside, moves no mean that is outside further out, and does not
       carry the repaired mean past the opposite bound.
    5. If no record qualifies, try the next worst record of step 3; if none has a
       partner, or after `max_swaps` swaps a mean is still outside, stop with
       RangeInfeasibleError naming the indicator.

    Each swap strictly shrinks one indicator's distance to its range and grows no
    other's, so the search never cycles. For a single indicator `size` swaps
    always suffice: every swap replaces a record on the wrong side of the bound by
    one on the right side, so after `size` of them no record is left on the wrong
    side. Repairs of several indicators take turns and can undo part of each
    other's work, so the default `max_swaps` is `size` per ranged indicator.
    Records whose value is missing (NaN) count in no mean (the subset mean skips
    them) and are never added.
    """
    order = np.asarray(order, dtype=np.int64)
    # everything below works on rank positions: position 0 is the best-ranked record
    cols = np.ascontiguousarray(np.asarray(values, dtype=np.float64)[order].T)  # (m, n)
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    m, n = cols.shape
    finite = np.isfinite(cols)
    v0 = np.where(finite, cols, 0.0)
    addable = finite.all(axis=0)  # a value for every ranged indicator
    selected = np.zeros(n, dtype=bool)
    selected[:size] = True
    sums = v0[:, :size].sum(axis=1)
    counts = finite[:, :size].sum(axis=1)
    width = np.where(hi > lo, hi - lo, 1.0)
    tol = np.array([_tolerance(a, b) for a, b in zip(lo, hi, strict=True)])
    limit = size * m if max_swaps is None else max_swaps
    swaps = 0
    while True:
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            raise RangeInfeasibleError(
                f"within-range selection: none of the {size} selected records has a value of "
                f"{names[empty[0]]}, so its subset mean is undefined"
            )
        means = sums / counts
        distance = np.maximum(np.maximum(lo - means, means - hi) - tol, 0.0) / width
        if not distance.any():
            break
        f = int(np.argmax(distance))
        too_low = bool(means[f] < lo[f])
        if swaps >= limit:
            raise RangeInfeasibleError(
                f"within-range selection: after {swaps} swaps (the limit) the subset mean "
                f"{names[f]} {_number(means[f], lo[f], hi[f])} is still outside the rule's "
                f"fitted range [{_number(lo[f])}, {_number(hi[f])}]; no feasible subset was found"
            )
        # the allowed interval of every mean after the swap, [min(lo, mean), max(hi, mean)]:
        # inside stays inside, outside comes no further out, nothing overshoots a bound
        pair = _swap(
            cols[f],
            too_low,
            lo[f] if too_low else hi[f],
            selected,
            addable,
            v0,
            finite,
            sums,
            counts,
            np.minimum(lo, means),
            np.maximum(hi, means),
        )
        if pair is None:
            side, bound = ("below", lo[f]) if too_low else ("above", hi[f])
            with np.errstate(invalid="ignore"):
                right = cols[f] >= bound if too_low else cols[f] <= bound
            if (right & addable & ~selected).any():
                why = "no unselected record moves it back without pushing another mean out"
            else:
                relation = "at or above" if too_low else "at or below"
                why = f"no unselected record has a value {relation} {_number(bound)}"
            raise RangeInfeasibleError(
                f"within-range selection: the subset mean {names[f]} "
                f"{_number(means[f], lo[f], hi[f])} is {side} the rule's fitted range "
                f"[{_number(lo[f])}, {_number(hi[f])}] and {why} (after {swaps} swaps of "
                f"{size} records)"
            )
        out, into = pair
        selected[out] = False
        selected[into] = True
        sums = sums - v0[:, out] + v0[:, into]  # the same arithmetic as the check in _swap
        counts = counts - finite[:, out] + finite[:, into]
        swaps += 1
    return order[selected], swaps


def _swap(
    column: np.ndarray,
    too_low: bool,
    bound: float,
    selected: np.ndarray,
    addable: np.ndarray,
    v0: np.ndarray,
    finite: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    allow_lo: np.ndarray,
    allow_hi: np.ndarray,
) -> tuple[int, int] | None:
    """Rank positions (removed, added) of the next swap repairing `column`, or None.

    Steps 3-5 of `within_range_subset`: `column` holds the indicator's value by rank
    position, `bound` is the range's bound on the side the mean left.
    """
    with np.errstate(invalid="ignore"):  # NaN compares False: never an offender nor added
        wrong_side = column < bound if too_low else column > bound
        right_side = column >= bound if too_low else column <= bound
    offenders = np.flatnonzero(selected & wrong_side)
    partners = np.flatnonzero(~selected & addable & right_side)
    if not len(offenders) or not len(partners):
        return None
    own = column[offenders] if too_low else -column[offenders]
    worst = own.min()
    # the worst offender: furthest out, then the lowest-ranked (largest position); the
    # full order is needed only when it finds no partner
    first = int(offenders[own == worst].max())
    tried = _partner(first, partners, v0, finite, sums, counts, allow_lo, allow_hi)
    if tried is not None:
        return first, tried
    for out in offenders[np.lexsort((-offenders, own))]:
        if out == first:
            continue
        tried = _partner(int(out), partners, v0, finite, sums, counts, allow_lo, allow_hi)
        if tried is not None:
            return int(out), tried
    return None


def _partner(
    out: int,
    partners: np.ndarray,
    v0: np.ndarray,
    finite: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    allow_lo: np.ndarray,
    allow_hi: np.ndarray,
) -> int | None:
    """The best-ranked of `partners` whose exchange for `out` keeps every mean allowed."""
    base = (sums - v0[:, out])[:, None]
    left = (counts - finite[:, out] + 1)[:, None]
    lo, hi = allow_lo[:, None], allow_hi[:, None]
    for start in range(0, len(partners), _CHUNK):
        block = partners[start : start + _CHUNK]
        new = (base + v0[:, block]) / left
        ok = ((new >= lo) & (new <= hi)).all(axis=0)
        if ok.any():
            return int(block[int(np.argmax(ok))])
    return None
