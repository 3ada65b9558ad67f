"""How far to trust a rule fitted on few datasets: collinearity and cross-validated error.

In-sample R² flatters a rule chosen by stepwise search on a few dozen rows; the
cross-validated RMSE of the (log) loss, next to that of the intercept-only
model, is the honest measure. `kfold_rmse(..., select=...)` repeats the
selection inside every fold, so the search itself is validated too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from instructmining.regression.stepwise import ols_stats


def vif(X: pd.DataFrame) -> dict[str, float]:
    """Variance inflation factor per column (1 = uncorrelated; above 10 is commonly a concern)."""
    out: dict[str, float] = {}
    cols = list(X.columns)
    if len(cols) < 2:
        return dict.fromkeys(map(str, cols), 1.0)
    values = X.to_numpy(dtype=float)
    for i, col in enumerate(cols):
        others = np.delete(values, i, axis=1)
        r2 = ols_stats(others, values[:, i]).rsquared
        out[str(col)] = math.inf if r2 >= 1.0 else 1.0 / (1.0 - r2)
    return out


def loo_residuals(X: pd.DataFrame, y: pd.Series) -> np.ndarray:
    """Leave-one-out prediction errors of OLS on [1, X], from the hat matrix (exact)."""
    n = len(y)
    design = np.column_stack([np.ones(n), X.to_numpy(dtype=float)])
    pinv = np.linalg.pinv(design)
    hat = np.einsum("ij,ji->i", design, pinv)
    resid = y.to_numpy(dtype=float) - design @ (pinv @ y.to_numpy(dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        return resid / (1.0 - hat)


def loo_rmse(X: pd.DataFrame, y: pd.Series) -> float:
    """Root mean squared leave-one-out error (square root of PRESS / n)."""
    errors = loo_residuals(X, y)
    return float(np.sqrt(np.mean(errors**2)))


def fold_ids(n: int, k: int, seed: int) -> np.ndarray:
    """A fold number per row: a seeded shuffle cut into k nearly equal folds."""
    if k < 2:
        raise ValueError(f"The 'cv_folds' parameter must be >= 2. Got {k} instead.")
    k = min(k, n)
    order = np.random.default_rng(seed).permutation(n)
    ids = np.empty(n, dtype=int)
    ids[order] = np.arange(n) % k
    return ids


def kfold_rmse(
    X: pd.DataFrame,
    y: pd.Series,
    *,
    k: int = 5,
    seed: int = 0,
    select: Callable[[pd.DataFrame, pd.Series], Sequence[str]] | None = None,
) -> float:
    """k-fold cross-validated RMSE of OLS; with `select`, the features are re-chosen per fold."""
    folds = fold_ids(len(y), k, seed)
    errors = np.empty(len(y))
    for fold in np.unique(folds):
        test = folds == fold
        Xtr, ytr = X[~test].reset_index(drop=True), y[~test].reset_index(drop=True)
        cols = list(select(Xtr, ytr)) if select is not None else list(X.columns)
        res = ols_stats(Xtr[cols].to_numpy(dtype=float), ytr.to_numpy(dtype=float))
        design = np.column_stack([np.ones(int(test.sum())), X.loc[test, cols].to_numpy(float)])
        errors[test] = y[test].to_numpy(dtype=float) - design @ res.params
    return float(np.sqrt(np.mean(errors**2)))


def baseline_loo_rmse(y: pd.Series) -> float:
    """Leave-one-out RMSE of predicting every dataset's (log) loss by the mean of the others."""
    n = len(y)
    values = y.to_numpy(dtype=float)
    errors = (values - values.mean()) * n / (n - 1)
    return float(np.sqrt(np.mean(errors**2)))


def selection_frequency(
    X: pd.DataFrame,
    y: pd.Series,
    choose: Callable[[pd.DataFrame, pd.Series], Sequence[str]],
    *,
    resamples: int,
    seed: int = 0,
) -> tuple[dict[str, float], int]:
    """How often each column is chosen when the selection reruns on bootstrap resamples.

    A stepwise search on a few dozen rows can turn on one or two datasets; an
    indicator chosen in most resamples is a finding, one chosen in a third of them
    is not. Returns ({column: share of resamples choosing it}, resamples that ran);
    a resample the selection cannot fit (too few distinct rows) is skipped.
    """
    from instructmining.errors import InstructMiningError

    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(map(str, X.columns), 0)
    ran = 0
    n = len(y)
    for _ in range(resamples):
        rows = rng.integers(0, n, size=n)
        Xb, yb = X.iloc[rows].reset_index(drop=True), y.iloc[rows].reset_index(drop=True)
        try:
            chosen = choose(Xb, yb)
        except (InstructMiningError, np.linalg.LinAlgError, ValueError):
            continue
        ran += 1
        for col in chosen:
            counts[str(col)] += 1
    if not ran:
        return {}, 0
    return {col: count / ran for col, count in counts.items()}, ran
