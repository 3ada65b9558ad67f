"""Choose which indicators enter the rule: stepwise (forward, backward, both) or best subset.

The searches fit many small OLS models, so they use a direct least-squares
solution (`ols_stats`) whose statistics equal statsmodels' (the tests hold
this); the chosen model is then refitted with statsmodels. Every step is kept
as a `Step`, so the report can show how the rule was reached.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

METHODS = ("stepwise", "best-subset", "all")
DIRECTIONS = ("forward", "backward", "both")
CRITERIA = ("pvalue", "aic", "bic")
RANK_BY = ("bic", "aic", "adj_r2")
#: best-subset search is exhaustive: 2**15 = 32,768 fits is the most we allow
MAX_SUBSET_CANDIDATES = 15


@dataclass(frozen=True)
class OLSStats:
    """The statistics of one least-squares fit with an intercept (statsmodels' definitions)."""

    params: np.ndarray  # intercept first
    bse: np.ndarray
    pvalues: np.ndarray
    rss: float
    llf: float
    aic: float
    bic: float
    rsquared: float
    rsquared_adj: float
    df_resid: int


def ols_stats(X: np.ndarray, y: np.ndarray) -> OLSStats:
    """OLS of y on [1, X] by least squares; AIC/BIC/log-likelihood as statsmodels computes them."""
    from scipy import stats

    n = len(y)
    design = np.column_stack([np.ones(n), X]) if X.size else np.ones((n, 1))
    params, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ params
    rss = float(resid @ resid)
    k = design.shape[1]
    df_resid = n - k
    sigma2 = rss / df_resid if df_resid > 0 else math.nan
    cov = sigma2 * np.linalg.pinv(design.T @ design)
    bse = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        tvalues = params / bse
    pvalues = 2.0 * stats.t.sf(np.abs(tvalues), df_resid) if df_resid > 0 else np.full(k, np.nan)
    llf = -0.5 * n * (math.log(2.0 * math.pi) + math.log(max(rss, 1e-300) / n) + 1.0)
    tss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - rss / tss if tss > 0 else math.nan
    r2_adj = 1.0 - (n - 1) / df_resid * (1.0 - r2) if df_resid > 0 else math.nan
    return OLSStats(
        params=params,
        bse=bse,
        pvalues=pvalues,
        rss=rss,
        llf=llf,
        aic=-2.0 * llf + 2.0 * k,
        bic=-2.0 * llf + k * math.log(n),
        rsquared=r2,
        rsquared_adj=r2_adj,
        df_resid=df_resid,
    )


@dataclass(frozen=True)
class Step:
    """One step of a selection: what changed and the criterion value that decided it.

    For p-value selection `value` is the p-value of the variable added or removed;
    for AIC/BIC it is the model's criterion after the step; for best subset it is
    the ranking criterion of the best model of that size.
    """

    step: int
    action: str  # "start", "add", "remove" or "best"
    variable: str | None
    criterion: str
    value: float
    features: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the feature tuple becomes a list; NaN becomes None)."""
        d = asdict(self)
        d["features"] = list(self.features)
        d["value"] = None if not math.isfinite(self.value) else float(self.value)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        """Inverse of `to_dict`."""
        value = d.get("value")
        return cls(
            step=int(d["step"]),
            action=str(d["action"]),
            variable=d.get("variable"),
            criterion=str(d["criterion"]),
            value=math.nan if value is None else float(value),
            features=tuple(d.get("features", ())),
        )


@dataclass(frozen=True)
class Selection:
    """The indicators chosen and the path that led to them."""

    features: tuple[str, ...]
    path: tuple[Step, ...]
    settings: dict[str, Any]


class _Model:
    """Fits on column subsets of one table, remembering the results."""

    def __init__(self, X: pd.DataFrame, y: pd.Series) -> None:
        self.names = [str(c) for c in X.columns]
        self.X = X.to_numpy(dtype=float)
        self.y = y.to_numpy(dtype=float)
        self.n = len(self.y)
        self._cache: dict[tuple[str, ...], OLSStats] = {}
        # Centred cross-products: the RSS of any subset is then one small solve, which is
        # what makes an exhaustive search over 2**15 subsets take seconds, not minutes.
        Xc = self.X - self.X.mean(axis=0)
        yc = self.y - self.y.mean()
        self._gram = Xc.T @ Xc
        self._xty = Xc.T @ yc
        self._tss = float(yc @ yc)
        self._index = {name: i for i, name in enumerate(self.names)}

    def fit(self, features: Sequence[str]) -> OLSStats:
        key = tuple(sorted(features))
        if key not in self._cache:
            idx = [self.names.index(f) for f in features]
            self._cache[key] = ols_stats(self.X[:, idx], self.y)
        return self._cache[key]

    def pvalue(self, features: Sequence[str], variable: str) -> float:
        res = self.fit(features)
        return float(res.pvalues[1 + list(features).index(variable)])

    def rss(self, features: Sequence[str]) -> float:
        """Residual sum of squares of OLS on the intercept and `features`."""
        if not features:
            return self._tss
        return self.rss_idx([self._index[f] for f in features])

    def rss_idx(self, idx: Sequence[int]) -> float:
        """`rss` by column positions (the hot path of best-subset search)."""
        if not idx:
            return self._tss
        idx = list(idx)  # a tuple would index several axes
        gram = self._gram[np.ix_(idx, idx)]
        xty = self._xty[idx]
        try:
            beta = np.linalg.solve(gram, xty)
        except np.linalg.LinAlgError:
            beta = np.linalg.lstsq(gram, xty, rcond=None)[0]
        return max(self._tss - float(beta @ xty), 0.0)

    def rss_many(self, combos: np.ndarray) -> np.ndarray:
        """RSS of every row of `combos` (column positions, all of one size) in one batched solve."""
        gram = self._gram[combos[:, :, None], combos[:, None, :]]
        xty = self._xty[combos]
        try:
            beta = np.linalg.solve(gram, xty[..., None])[..., 0]
        except np.linalg.LinAlgError:  # a singular subset somewhere: solve one by one
            return np.array([self.rss_idx(list(c)) for c in combos])
        return np.maximum(self._tss - np.einsum("ij,ij->i", beta, xty), 0.0)

    def score(self, features: Sequence[str], criterion: str) -> float:
        """AIC, BIC or adjusted R² (statsmodels' definitions) from the RSS alone."""
        return self.score_rss(self.rss(features), len(features), criterion)

    def score_rss(self, rss: float, n_features: int, criterion: str) -> float:
        """The criterion of a model with `n_features` indicators and residual sum `rss`."""
        n, k = self.n, n_features + 1
        if criterion == "adj_r2":
            if self.n - k <= 0 or self._tss <= 0:
                return math.nan
            return 1.0 - (n - 1) / (n - k) * rss / self._tss
        llf = -0.5 * n * (math.log(2.0 * math.pi) + math.log(max(rss, 1e-300) / n) + 1.0)
        penalty = 2.0 * k if criterion == "aic" else k * math.log(n)
        return -2.0 * llf + penalty

    def max_features(self) -> int:
        # keep at least two residual degrees of freedom (rows >= parameters + 2)
        return self.n - 3


def _check(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(
            f"The {name!r} parameter must be one of {', '.join(choices)}. Got {value!r} instead."
        )


def select_features(
    X: pd.DataFrame,
    y: pd.Series,
    *,
    method: str = "stepwise",
    direction: str = "both",
    criterion: str = "pvalue",
    enter: float = 0.05,
    remove: float = 0.10,
    rank_by: str = "bic",
    max_steps: int = 100,
) -> Selection:
    """Choose indicator columns of `X` to predict `y`; see the module docstring."""
    _check("method", method, METHODS)
    _check("direction", direction, DIRECTIONS)
    _check("criterion", criterion, CRITERIA)
    _check("rank_by", rank_by, RANK_BY)
    if not 0.0 < enter <= 1.0 or not 0.0 < remove <= 1.0:
        raise ValueError(f"enter and remove must be in (0, 1]. Got {enter} and {remove} instead.")
    if criterion == "pvalue" and direction == "both" and enter > remove:
        raise ValueError(
            f"with direction 'both', enter ({enter}) must not exceed remove ({remove}), "
            "or a variable could enter and leave forever"
        )
    model = _Model(X, y)
    if method == "all":
        settings: dict[str, Any] = {"method": "all"}
        feats = tuple(model.names)
        return Selection(feats, (Step(0, "start", None, "none", math.nan, feats),), settings)
    if method == "best-subset":
        return _best_subset(model, rank_by)
    settings = {
        "method": "stepwise",
        "direction": direction,
        "criterion": criterion,
        "enter": enter if criterion == "pvalue" else None,
        "remove": remove if criterion == "pvalue" else None,
    }
    if criterion == "pvalue":
        steps = _stepwise_pvalue(model, direction, enter, remove, max_steps)
    else:
        steps = _stepwise_ic(model, direction, criterion, max_steps)
    return Selection(steps[-1].features, tuple(steps), settings)


def _start(model: _Model, direction: str) -> list[str]:
    if direction != "backward":
        return []
    if len(model.names) > model.max_features():
        from instructmining.errors import ParameterError

        raise ParameterError(
            f"backward selection starts from all {len(model.names)} indicators, which needs at "
            f"least {len(model.names) + 3} datasets; the table has {model.n}. Use forward "
            "selection or fewer --features"
        )
    return list(model.names)


def _stepwise_pvalue(
    model: _Model, direction: str, enter: float, remove: float, max_steps: int
) -> list[Step]:
    current = _start(model, direction)
    path = [Step(0, "start", None, "pvalue", math.nan, tuple(current))]
    seen = {frozenset(current)}

    def try_remove() -> bool:
        if not current:
            return False
        pvals = {f: model.pvalue(current, f) for f in current}
        worst = max(current, key=lambda f: (pvals[f], -current.index(f)))
        if pvals[worst] > remove:
            current.remove(worst)
            path.append(Step(len(path), "remove", worst, "pvalue", pvals[worst], tuple(current)))
            return True
        return False

    def try_add() -> bool:
        if len(current) >= model.max_features():
            return False
        candidates = [f for f in model.names if f not in current]
        if not candidates:
            return False
        pvals = {f: model.pvalue([*current, f], f) for f in candidates}
        # ties go to the earlier column, so the choice is reproducible
        best = min(candidates, key=lambda f: (pvals[f], candidates.index(f)))
        if pvals[best] < enter and frozenset([*current, best]) not in seen:
            current.append(best)
            seen.add(frozenset(current))
            path.append(Step(len(path), "add", best, "pvalue", pvals[best], tuple(current)))
            return True
        return False

    for _ in range(max_steps):
        if direction == "backward":
            if not try_remove():
                break
        elif direction == "forward":
            if not try_add():
                break
        else:
            if not try_add():
                break
            while try_remove():
                seen.add(frozenset(current))
    return path


def _stepwise_ic(model: _Model, direction: str, criterion: str, max_steps: int) -> list[Step]:
    current = _start(model, direction)
    best_value = model.score(current, criterion)
    path = [Step(0, "start", None, criterion, best_value, tuple(current))]
    for _ in range(max_steps):
        moves: list[tuple[float, int, str, str, list[str]]] = []
        if direction in ("forward", "both") and len(current) < model.max_features():
            for i, f in enumerate(model.names):
                if f not in current:
                    feats = [*current, f]
                    moves.append((model.score(feats, criterion), i, "add", f, feats))
        if direction in ("backward", "both"):
            for f in current:
                feats = [g for g in current if g != f]
                i = model.names.index(f)
                moves.append((model.score(feats, criterion), i, "remove", f, feats))
        if not moves:
            break
        value, _, action, variable, feats = min(moves, key=lambda m: (m[0], m[1]))
        if not value < best_value - 1e-10:
            break
        current, best_value = feats, value
        path.append(Step(len(path), action, variable, criterion, value, tuple(current)))
    return path


def _best_subset(model: _Model, rank_by: str) -> Selection:
    names = model.names
    if len(names) > MAX_SUBSET_CANDIDATES:
        raise ValueError(
            f"best-subset search is exhaustive and takes at most {MAX_SUBSET_CANDIDATES} "
            f"candidate indicators; got {len(names)}. Use stepwise selection or fewer features"
        )
    higher_better = rank_by == "adj_r2"

    def key(value: float) -> float:
        return -value if higher_better else value

    path: list[Step] = []
    overall: tuple[float, tuple[str, ...]] | None = None
    top = min(len(names), model.max_features())
    for size in range(1, top + 1):
        best: tuple[float, tuple[str, ...]] | None = None
        # Within one size every criterion is monotone in the RSS, so the smallest RSS wins;
        # combinations come in lexicographic order and argmin keeps the first of ties.
        combos = np.array(list(itertools.combinations(range(len(names)), size)), dtype=np.intp)
        rss = model.rss_many(combos)
        i = int(np.argmin(rss))
        value = model.score_rss(float(rss[i]), size, rank_by)
        if math.isfinite(value):
            best = (value, tuple(names[j] for j in combos[i]))
        if best is None:
            continue
        path.append(Step(len(path), "best", None, rank_by, best[0], best[1]))
        if overall is None or key(best[0]) < key(overall[0]) - 1e-12:
            overall = best
    chosen = overall[1] if overall is not None else ()
    settings = {"method": "best-subset", "rank_by": rank_by, "candidates": len(names)}
    return Selection(tuple(chosen), tuple(path), settings)
