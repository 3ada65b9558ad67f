"""`fit_rule`: from an experiment table to a Rule, with the statistics to judge it."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from instructmining.errors import DataError
from instructmining.regression.diagnostics import (
    baseline_loo_rmse,
    kfold_rmse,
    loo_residuals,
    selection_frequency,
    vif,
)
from instructmining.regression.rule import Rule, _fmt, _text_table
from instructmining.regression.stepwise import Selection, select_features
from instructmining.regression.table import (
    FitWarning,
    PreparedTable,
    as_frame,
    needed_rows,
    prepare_table,
)
from instructmining.regression.univariate import correlations, loss_per_bin

#: VIF above which a warning says the coefficients are unstable
VIF_WARNING = 10.0


@dataclass
class FitResult:
    """A fitted rule and everything needed to judge it: the model, diagnostics, univariate view."""

    rule: Rule
    prepared: PreparedTable
    selection: Selection
    model: Any  # statsmodels RegressionResults of the chosen indicators (raw scale)
    coefficients: pd.DataFrame
    univariate: pd.DataFrame
    bins: pd.DataFrame
    fitted: np.ndarray
    residuals: np.ndarray
    loo_errors: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def statistics(self) -> dict[str, Any]:
        """The fit statistics stored in the rule."""
        return self.rule.statistics

    def summary(self) -> str:
        """Text report: the rule, the selection path, cross-validated error, univariate table."""
        s = self.statistics
        lines = [self.rule.summary(), "", "Selection path:"]
        lines.append(_text_table(path_rows(self.rule)))
        lines += [
            "",
            "Cross-validated RMSE of the "
            + ("log loss" if self.rule.target_transform == "log" else "loss")
            + f": leave-one-out {_fmt(s.get('loo_rmse'))}, {s.get('cv_folds')}-fold "
            f"{_fmt(s.get('kfold_rmse'))}, {s.get('cv_folds')}-fold with selection repeated "
            f"{_fmt(s.get('kfold_selection_rmse'))}; intercept only (leave-one-out) "
            f"{_fmt(s.get('baseline_loo_rmse'))}",
            "",
            "Univariate correlations with the target:",
            _text_table(self.univariate.to_dict(orient="records")),
        ]
        if self.warnings:
            lines += ["", "Warnings:", *[f"  {w}" for w in self.warnings]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"FitResult(rule={self.rule.name!r}, n={self.statistics.get('n')}, "
            f"features={self.rule.features!r}, r2={_fmt(self.statistics.get('r2'))}, "
            f"loo_rmse={_fmt(self.statistics.get('loo_rmse'))})"
        )

    def _repr_html_(self) -> str:
        return self.rule._repr_html_() + f"<pre>{escape(self.summary())}</pre>"

    def write_report(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write `report.md` and PNG plots into `directory` (created if needed)."""
        from instructmining.regression.report import write_report

        return write_report(self, directory, overwrite=overwrite)


def path_rows(rule: Rule) -> list[dict[str, Any]]:
    """The selection path of a rule as table rows."""
    return [
        {
            "step": st.get("step"),
            "action": st.get("action"),
            "variable": st.get("variable") or "",
            "criterion": st.get("criterion"),
            "value": st.get("value"),
            "model": ", ".join(st.get("features", [])) or "(intercept only)",
        }
        for st in rule.selection.get("path", [])
    ]


def fit_rule(
    table: Any,
    *,
    features: Sequence[str],
    loss: str = "eval_loss",
    target_transform: str = "log",
    method: str = "stepwise",
    direction: str = "both",
    criterion: str = "pvalue",
    enter: float = 0.05,
    remove: float = 0.10,
    rank_by: str = "bic",
    standardize: bool = False,
    dropna: bool = False,
    cv_folds: int = 5,
    seed: int = 0,
    bootstrap: int = 0,
    indicators: Mapping[str, Mapping[str, Any]] | None = None,
    name: str | None = None,
    source: str | Path | None = None,
) -> FitResult:
    """Fit a Rule predicting `loss` from the indicator columns `features` of `table`.

    `table` is a DataFrame (or mapping of columns) with one row per finetuned
    dataset. `method` is "stepwise" (with `direction`, `criterion`, `enter`,
    `remove`), "best-subset" (ranked by `rank_by`) or "all". `indicators` maps a
    feature to the `params()` of the indicator that produced it; without it the
    rule records the name only. `source` names the table in errors and provenance.
    `bootstrap` > 0 reruns the selection on that many bootstrap resamples of the
    rows (seeded by `seed`) and records how often each indicator is chosen.
    Rows of a univariate design (columns `bin_indicator` or `indicator`, and `bin`)
    also give the loss per bin (`FitResult.bins`).
    """
    import statsmodels.api as sm

    frame = as_frame(table)
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", FitWarning)
        prepared = prepare_table(
            frame,
            features=features,
            loss=loss,
            target_transform=target_transform,
            dropna=dropna,
            source=source,
        )
        X, y = prepared.X, prepared.y
        if method != "stepwise" or direction == "backward" or method == "all":
            _check_rows(len(y), len(prepared.features), source, method)

        def choose(Xf: pd.DataFrame, yf: pd.Series) -> tuple[str, ...]:
            return select_features(
                Xf,
                yf,
                method=method,
                direction=direction,
                criterion=criterion,
                enter=enter,
                remove=remove,
                rank_by=rank_by,
            ).features

        selection = select_features(
            X,
            y,
            method=method,
            direction=direction,
            criterion=criterion,
            enter=enter,
            remove=remove,
            rank_by=rank_by,
        )
        chosen = list(selection.features)
        if not chosen:
            warnings.warn(
                "no indicator met the selection criterion; the rule is the mean "
                f"{'log ' if target_transform == 'log' else ''}loss (intercept only)",
                FitWarning,
                stacklevel=2,
            )
        Xc = X[chosen]
        model = sm.OLS(y.to_numpy(dtype=float), sm.add_constant(Xc, has_constant="add")).fit()
        vifs = vif(Xc)
        for col, value in vifs.items():
            if value > VIF_WARNING:
                warnings.warn(
                    f"indicator {col!r} has variance inflation factor {value:.1f} (> "
                    f"{VIF_WARNING:g}): it is nearly a combination of the others and its "
                    "coefficient is unstable",
                    FitWarning,
                    stacklevel=2,
                )
        n = len(y)
        folds = min(cv_folds, n)
        loo_err = loo_residuals(Xc, y)
        stats = _statistics(model, chosen, vifs)
        stats.update(
            {
                "loo_rmse": float(np.sqrt(np.mean(loo_err**2))),
                "kfold_rmse": kfold_rmse(Xc, y, k=folds, seed=seed),
                "kfold_selection_rmse": _selection_cv(X, y, folds, seed, choose, method),
                "baseline_loo_rmse": baseline_loo_rmse(y),
                "cv_folds": folds,
                "cv_seed": seed,
                "target_scale": "log loss" if target_transform == "log" else "loss",
            }
        )
        if bootstrap > 0 and method != "all":
            frequency, ran = selection_frequency(X, y, choose, resamples=bootstrap, seed=seed)
            stats.update({"selection_frequency": frequency, "bootstrap_resamples": ran})
        standardization = _standardization(X[chosen], y, model) if standardize else None
    for rec in records:
        if issubclass(rec.category, FitWarning):
            caught.append(str(rec.message))
        # hand every warning on to the caller (the CLI prints them on stderr)
        warnings.warn_explicit(rec.message, rec.category, rec.filename, rec.lineno)

    params = model.params
    coefficients = {c: float(params[c]) for c in chosen}
    config = {c: _indicator_params(c, indicators) for c in chosen}
    from instructmining import __version__

    rule = Rule(
        name=name or (f"fitted-{Path(source).stem}" if source is not None else "fitted"),
        intercept=float(params["const"]),
        coefficients=coefficients,
        target=loss,
        target_transform=target_transform,
        indicators=config,
        standardization=standardization,
        statistics=stats,
        selection={
            **selection.settings,
            "candidates": list(prepared.features),
            "path": [st.to_dict() for st in selection.path],
        },
        provenance={
            "source": str(source) if source is not None else "in-memory table",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "package_version": __version__,
            "rows_used": n,
            "rows_dropped": list(prepared.dropped_rows),
            "features_offered": list(dict.fromkeys(features)),
            "features_dropped": dict(prepared.dropped_features),
            "indicator_configuration": (
                "the indicators' params() as recorded with the table"
                if indicators and all(c in indicators for c in chosen)
                else "names only: the table did not record the indicators' settings"
            ),
        },
        notes=f"Fitted by instructmining {__version__} on {n} datasets.",
        ranges=fitted_ranges(X[chosen]),
    )
    coef_table = _coefficient_frame(model, chosen, vifs, standardization)
    uni = pd.DataFrame(correlations(X, y))
    bins = loss_per_bin(frame, loss=loss, features=prepared.features, transform=target_transform)
    return FitResult(
        rule=rule,
        prepared=prepared,
        selection=selection,
        model=model,
        coefficients=coef_table,
        univariate=uni,
        bins=bins,
        fitted=np.asarray(model.fittedvalues, dtype=float),
        residuals=np.asarray(model.resid, dtype=float),
        loo_errors=loo_err,
        warnings=caught,
    )


def fitted_ranges(X: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per column of `X` (one row per candidate dataset): min, mean, max and the count n.

    The mean is clamped into [min, max]: summing n equal floats can land an ulp outside.
    """
    ranges: dict[str, dict[str, float]] = {}
    for col in X.columns:
        values = X[col].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        lo, hi = float(values.min()), float(values.max())
        ranges[str(col)] = {
            "min": lo,
            "mean": min(max(float(values.mean()), lo), hi),
            "max": hi,
            "n": len(values),
        }
    return ranges


def _selection_cv(
    X: pd.DataFrame, y: pd.Series, folds: int, seed: int, choose: Any, method: str
) -> float | None:
    """k-fold RMSE with the selection redone in every fold; None where a fold is too small."""
    if method == "all":
        return None
    from instructmining.errors import InstructMiningError

    try:
        return kfold_rmse(X, y, k=folds, seed=seed, select=choose)
    except InstructMiningError:
        return None


def _check_rows(n: int, k: int, source: Any, method: str) -> None:
    need = needed_rows(k if method != "best-subset" else 1)
    if n < need:
        raise DataError(
            f"{n} datasets is too few to fit {k} indicators with an intercept; at least {need} "
            "are needed (parameters + 2). Add finetuning runs or pass fewer --features",
            path=source,
        )


def _indicator_params(
    name: str, indicators: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, Any]:
    if indicators and name in indicators:
        params = dict(indicators[name])
        params.setdefault("name", name)
        return params
    return {"name": name}


def _statistics(model: Any, chosen: list[str], vifs: dict[str, float]) -> dict[str, Any]:
    ci = np.asarray(model.conf_int(0.05))
    terms = ["intercept", *chosen]
    table = {}
    for i, term in enumerate(terms):
        table[term] = {
            "std_error": float(model.bse.iloc[i]),
            "t": float(model.tvalues.iloc[i]),
            "p_value": float(model.pvalues.iloc[i]),
            "ci_low": float(ci[i, 0]),
            "ci_high": float(ci[i, 1]),
        }
    f_p = float(model.f_pvalue) if chosen else math.nan
    return {
        "n": int(model.nobs),
        "k": len(chosen),
        "r2": float(model.rsquared),
        "adj_r2": float(model.rsquared_adj),
        "f_statistic": float(model.fvalue) if chosen else math.nan,
        "f_pvalue": f_p,
        "aic": float(model.aic),
        "bic": float(model.bic),
        "sigma": float(math.sqrt(model.scale)),
        "rmse": float(np.sqrt(np.mean(np.asarray(model.resid) ** 2))),
        "coefficients": table,
        "vif": vifs,
    }


def _standardization(Xc: pd.DataFrame, y: pd.Series, raw_model: Any) -> dict[str, Any]:
    """Means and standard deviations of the chosen indicators and the per-SD coefficients."""
    import statsmodels.api as sm

    mean = Xc.mean()
    scale = Xc.std(ddof=1)
    Z = (Xc - mean) / scale
    model = sm.OLS(y.to_numpy(dtype=float), sm.add_constant(Z, has_constant="add")).fit()
    ci = np.asarray(model.conf_int(0.05))
    cols = list(Xc.columns)
    return {
        "method": "z-score (mean 0, sample standard deviation 1)",
        "mean": {c: float(mean[c]) for c in cols},
        "scale": {c: float(scale[c]) for c in cols},
        "intercept": float(model.params["const"]),
        "coefficients": {c: float(model.params[c]) for c in cols},
        "std_errors": {c: float(model.bse[c]) for c in cols},
        "ci": {c: [float(ci[i + 1, 0]), float(ci[i + 1, 1])] for i, c in enumerate(cols)},
    }


def _coefficient_frame(
    model: Any, chosen: list[str], vifs: dict[str, float], standardization: dict[str, Any] | None
) -> pd.DataFrame:
    ci = np.asarray(model.conf_int(0.05))
    rows = []
    for i, term in enumerate(["intercept", *chosen]):
        row = {
            "term": term,
            "estimate": float(model.params.iloc[i]),
            "std_error": float(model.bse.iloc[i]),
            "t": float(model.tvalues.iloc[i]),
            "p_value": float(model.pvalues.iloc[i]),
            "ci_low": float(ci[i, 0]),
            "ci_high": float(ci[i, 1]),
            "vif": vifs.get(term, math.nan),
        }
        if standardization is not None:
            row["standardized"] = (
                standardization["intercept"]
                if term == "intercept"
                else standardization["coefficients"][term]
            )
        rows.append(row)
    return pd.DataFrame(rows)
