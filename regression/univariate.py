"""One indicator at a time: its correlation with the (log) loss and, for a univariate design,
the loss per bin.

A univariate design builds datasets by sorting the pool on one indicator and
cutting it into K bins; its rows carry the indicator sorted on (column
`bin_indicator`, or `indicator`) and the bin number (column `bin`, 0 = lowest
values). Where a `kind` column exists, only rows of kind "univariate" count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: columns naming the univariate design a row belongs to (the first one present is used)
BIN_INDICATOR_COLUMNS = ("bin_indicator", "indicator")
BIN_COLUMN = "bin"


def _fisher_ci(
    r: float, n: int, *, se_factor: float = 1.0, level: float = 0.95
) -> tuple[float, float]:
    """Confidence interval of a correlation through Fisher's z transform."""
    from scipy import stats

    if n <= 3 or not math.isfinite(r):
        return (math.nan, math.nan)
    r = min(max(r, -0.999999999), 0.999999999)
    z = math.atanh(r)
    half = stats.norm.ppf(0.5 + level / 2) * math.sqrt(se_factor / (n - 3))
    return (math.tanh(z - half), math.tanh(z + half))


def correlations(X: pd.DataFrame, y: pd.Series, *, level: float = 0.95) -> list[dict[str, Any]]:
    """Pearson and Spearman correlation of each column with `y`, with p-values and intervals.

    Pearson's interval uses Fisher's z with standard error 1/sqrt(n-3); Spearman's
    uses sqrt(1.06/(n-3)) (Fieller, Hartley and Pearson, Biometrika 1957).
    """
    from scipy import stats

    rows = []
    target = y.to_numpy(dtype=float)
    for col in X.columns:
        x = X[col].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(target)
        n = int(ok.sum())
        if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(target[ok]) == 0:
            r = rho = p_r = p_rho = math.nan
        else:
            r, p_r = (float(v) for v in stats.pearsonr(x[ok], target[ok]))
            rho, p_rho = (float(v) for v in stats.spearmanr(x[ok], target[ok]))
        lo, hi = _fisher_ci(r, n, level=level)
        slo, shi = _fisher_ci(rho, n, se_factor=1.06, level=level)
        rows.append(
            {
                "indicator": str(col),
                "n": n,
                "pearson_r": r,
                "pearson_p": p_r,
                "pearson_ci_low": lo,
                "pearson_ci_high": hi,
                "spearman_rho": rho,
                "spearman_p": p_rho,
                "spearman_ci_low": slo,
                "spearman_ci_high": shi,
            }
        )
    return rows


def loss_per_bin(
    table: pd.DataFrame,
    *,
    loss: str,
    features: Sequence[str],
    transform: str = "log",
) -> pd.DataFrame:
    """Mean (log) loss per bin of each univariate design in `table`; empty when there is none."""
    columns = ["bin_indicator", "bin", "datasets", "mean_target", "mean_value"]
    sort_col = next((c for c in BIN_INDICATOR_COLUMNS if c in table.columns), None)
    if sort_col is None or BIN_COLUMN not in table.columns:
        return pd.DataFrame(columns=columns)
    rows = table[table[sort_col].notna() & table[BIN_COLUMN].notna() & table[loss].notna()]
    if "kind" in rows.columns:
        rows = rows[rows["kind"] == "univariate"]
    if transform == "log":
        rows = rows[rows[loss] > 0]
    out = []
    for (indicator, bin_no), group in rows.groupby([sort_col, BIN_COLUMN], sort=True):
        target = np.log(group[loss]) if transform == "log" else group[loss]
        value = group[indicator].mean() if indicator in features else math.nan
        out.append(
            {
                "bin_indicator": str(indicator),
                "bin": bin_no,
                "datasets": len(group),
                "mean_target": float(target.mean()),
                "mean_value": float(value),
            }
        )
    return pd.DataFrame(out, columns=columns)
