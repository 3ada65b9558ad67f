"""Indicator health: flag a score column that cannot rank records.

A column is flagged when it is constant, mostly NaN, or takes only a handful of
distinct values over a large pool. Peer scorers have failed this way (a model
that gave every record the same score), and a rule fitted on such a column, or
a selection ranked by it, means nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: a column with more than this share of NaN is "mostly NaN"
MAX_NAN_SHARE = 0.5
#: at most this many distinct values ...
FEW_VALUES = 5
#: ... over at least this many values is "few-valued"
FEW_VALUES_MIN_RECORDS = 100
#: values are compared at this many significant digits (float noise is not a distinct value)
DIGITS = 6


@dataclass(frozen=True)
class HealthFlag:
    """What is wrong with one column: problems ("empty", "mostly_nan", "constant", "few_values")."""

    indicator: str
    problems: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON summaries)."""
        return {
            "indicator": self.indicator,
            "problems": list(self.problems),
            "message": self.message,
        }


def _rounded(values: np.ndarray) -> np.ndarray:
    """`values` rounded to DIGITS significant digits (zeros stay zero)."""
    out = values.copy()
    nonzero = out != 0
    scale = 10.0 ** (DIGITS - 1 - np.floor(np.log10(np.abs(out[nonzero]))))
    out[nonzero] = np.round(out[nonzero] * scale) / scale
    return out


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def column_health(name: str, values: Any) -> HealthFlag | None:
    """The flag of one column (None when healthy); `values` is numeric, NaN for missing."""
    arr = np.asarray(values, dtype=np.float64)
    n = int(arr.size)
    ok = arr[np.isfinite(arr)]
    missing = n - int(ok.size)
    if n == 0:
        return None
    if ok.size == 0:
        return HealthFlag(name, ("empty",), f"{name} has no value (all {n} are NaN)")
    problems: list[str] = []
    parts: list[str] = []
    if missing / n > MAX_NAN_SHARE:
        problems.append("mostly_nan")
        parts.append(f"is mostly NaN ({missing} of {n} values, {100 * missing / n:.0f} %)")
    distinct = np.unique(_rounded(ok))
    if ok.size >= 2 and distinct.size == 1:
        problems.append("constant")
        parts.append(f"is constant (all {ok.size} values are {_fmt(float(distinct[0]))})")
    elif ok.size >= FEW_VALUES_MIN_RECORDS and distinct.size <= FEW_VALUES:
        problems.append("few_values")
        shown = ", ".join(_fmt(float(v)) for v in distinct)
        parts.append(f"takes only {distinct.size} distinct values over {ok.size} records ({shown})")
    if not problems:
        return None
    return HealthFlag(name, tuple(problems), f"{name} " + " and ".join(parts))


def check_health(frame: Any, columns: Sequence[str]) -> list[HealthFlag]:
    """The flags of `columns` of a scores DataFrame, in column order (healthy ones omitted)."""
    flags = []
    for col in columns:
        flag = column_health(col, frame[col].to_numpy(dtype=np.float64, na_value=np.nan))
        if flag is not None:
            flags.append(flag)
    return flags


def health_lines(flags: Sequence[HealthFlag], n_columns: int) -> list[str]:
    """One line per flagged column, or one line saying that every column passed."""
    if not flags:
        return [
            f"health: all {n_columns} indicators vary (none constant, mostly NaN or few-valued)"
        ]
    return [f"health: {flag.message}" for flag in flags]
