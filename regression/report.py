"""The fit report: `report.md` (tables) and PNG plots, written into one folder."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from instructmining.errors import InputError, OutputExistsError
from instructmining.regression.rule import _fmt
from instructmining.writers import atomic_path

if TYPE_CHECKING:
    from instructmining.regression.fit import FitResult

PLOTS = {
    "predicted_vs_observed.png": "Predicted against observed",
    "residuals.png": "Residuals",
    "coefficients.png": "Coefficients with 95% intervals",
    "univariate.png": "Each indicator against the target",
    "bins.png": "Loss per bin of the univariate designs",
}


def _md_table(rows: Sequence[Mapping[Any, Any]]) -> str:
    if not rows:
        return "_none_\n"
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_fmt(_plain(row[k])) for k in keys) + " |")
    return "\n".join(out) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_report(result: FitResult, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write DIR/report.md and the plots; refuses to replace an existing report unless asked."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; give a folder for --report")
    if (out / "report.md").exists() and not overwrite:
        raise OutputExistsError(
            f"{out / 'report.md'}: exists already; pass --overwrite to replace it"
        )
    if not out.parent.exists():
        raise InputError(f"{out.parent}: the folder for the report does not exist")
    out.mkdir(exist_ok=True)
    plots = _plots(result, out)
    text = _markdown(result, plots)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out / "report.md"


def _markdown(result: FitResult, plots: list[str]) -> str:
    rule = result.rule
    s = rule.statistics
    target = "log loss" if rule.target_transform == "log" else "loss"
    lines = [
        f"# Rule `{rule.name}`",
        "",
        f"`{rule.formula()}`",
        "",
        f"Fitted on {s['n']} datasets from `{rule.provenance.get('source')}`; "
        "lower predicted loss is better.",
        "",
        "## Fit statistics",
        "",
        _md_table(
            [
                {"statistic": k, "value": s.get(k)}
                for k in (
                    "n",
                    "k",
                    "r2",
                    "adj_r2",
                    "f_statistic",
                    "f_pvalue",
                    "aic",
                    "bic",
                    "sigma",
                    "rmse",
                )
            ]
        ),
        "## Coefficients",
        "",
        "Estimates on the indicators' own scale, standard errors, p-values, 95% intervals"
        " and variance inflation factors"
        + (
            " (standardized = per standard deviation of the indicator)."
            if rule.standardization
            else "."
        ),
        "",
        _md_table(result.coefficients.to_dict(orient="records")),
        "## Fitted range",
        "",
        "Smallest, mean and largest value of each indicator the rule uses among the candidate"
        " datasets it was fitted on (each value a dataset's mean). A subset whose mean lies"
        " outside this span asks the rule to extrapolate; `select` warns about it and"
        " `--within-range` keeps the subset inside.",
        "",
        _md_table(rule.range_rows()),
        "## Selection path",
        "",
        _md_table(_path_rows(result)),
        "## Cross-validated error",
        "",
        f"RMSE of the {target}; the honest measure for a rule fitted on few datasets. "
        '"with selection" repeats the indicator selection inside every fold.',
        "",
        _md_table(
            [
                {"estimate": "in-sample", "rmse": s.get("rmse")},
                {"estimate": "leave-one-out", "rmse": s.get("loo_rmse")},
                {
                    "estimate": f"{s.get('cv_folds')}-fold (seed {s.get('cv_seed')})",
                    "rmse": s.get("kfold_rmse"),
                },
                {
                    "estimate": f"{s.get('cv_folds')}-fold with selection",
                    "rmse": s.get("kfold_selection_rmse"),
                },
                {"estimate": "intercept only, leave-one-out", "rmse": s.get("baseline_loo_rmse")},
            ]
        ),
        *_stability_section(s),
        "## Univariate analysis",
        "",
        f"Correlation of each candidate indicator with the {target}, with 95% intervals"
        " (Fisher z; Spearman with the Fieller–Hartley–Pearson variance).",
        "",
        _md_table(result.univariate.to_dict(orient="records")),
    ]
    if not result.bins.empty:
        lines += [
            "### Loss per bin",
            "",
            f"Datasets built by sorting the pool on one indicator and cutting bins (0 = lowest); mean {target} per bin.",
            "",
            _md_table(result.bins.to_dict(orient="records")),
        ]
    dropped = rule.provenance.get("features_dropped") or {}
    if dropped or result.warnings:
        lines += ["## Warnings", ""]
        lines += [f"- `{k}` dropped: {v}" for k, v in dropped.items()]
        lines += [
            f"- {w}"
            for w in result.warnings
            if not any(f"{k!r}" in w and "dropped" in w for k in dropped)
        ]
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{PLOTS[p]}]({p})" for p in plots]
    lines += ["", "## Indicator configuration", ""]
    lines += [f"- `{k}`: `{v}`" for k, v in rule.indicators.items()]
    lines += ["", f"Indicator settings: {rule.provenance.get('indicator_configuration')}."]
    return "\n".join(lines) + "\n"


def _path_rows(result: FitResult) -> list[dict[str, Any]]:
    from instructmining.regression.fit import path_rows

    return path_rows(result.rule)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plots(result: FitResult, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rule = result.rule
    label = f"log({rule.target})" if rule.target_transform == "log" else rule.target
    y = result.prepared.y.to_numpy(dtype=float)
    written: list[str] = []

    fig, ax = plt.subplots(figsize=(5.5, 5))
    loo_pred = y - result.loo_errors
    ax.scatter(result.fitted, y, label="fitted", color="tab:blue")
    ax.scatter(loo_pred, y, label="leave-one-out", facecolors="none", edgecolors="tab:orange")
    lo = float(np.nanmin([y.min(), np.nanmin(result.fitted), np.nanmin(loo_pred)]))
    hi = float(np.nanmax([y.max(), np.nanmax(result.fitted), np.nanmax(loo_pred)]))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"predicted {label}")
    ax.set_ylabel(f"observed {label}")
    ax.set_title(
        f"{rule.name}: R² {rule.statistics['r2']:.3f}, LOO RMSE {rule.statistics['loo_rmse']:.3g}"
    )
    ax.legend()
    _save(fig, out / "predicted_vs_observed.png")
    written.append("predicted_vs_observed.png")

    from scipy import stats

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax1.scatter(result.fitted, result.residuals, color="tab:blue")
    ax1.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax1.set_xlabel(f"fitted {label}")
    ax1.set_ylabel("residual")
    ax1.set_title("Residuals against fitted values")
    (osm, osr), (slope, intercept, _) = stats.probplot(result.residuals, dist="norm")
    ax2.scatter(osm, osr, color="tab:blue")
    ax2.plot(osm, slope * np.asarray(osm) + intercept, color="grey", linestyle="--", linewidth=1)
    ax2.set_xlabel("normal quantile")
    ax2.set_ylabel("ordered residual")
    ax2.set_title("Normal Q-Q plot of residuals")
    fig.tight_layout()
    _save(fig, out / "residuals.png")
    written.append("residuals.png")

    coef = result.coefficients[result.coefficients["term"] != "intercept"]
    if not coef.empty:
        sd = result.prepared.X[list(coef["term"])].std(ddof=1).to_numpy()
        est = coef["estimate"].to_numpy() * sd
        low = coef["ci_low"].to_numpy() * sd
        high = coef["ci_high"].to_numpy() * sd
        fig, ax = plt.subplots(figsize=(6, 0.6 * len(coef) + 1.6))
        pos = np.arange(len(coef))[::-1]
        ax.errorbar(est, pos, xerr=[est - low, high - est], fmt="o", capsize=4, color="tab:blue")
        ax.axvline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(pos, list(coef["term"]))
        ax.set_xlabel(f"change in {label} per standard deviation of the indicator")
        ax.set_title("Coefficients with 95% intervals")
        _save(fig, out / "coefficients.png")
        written.append("coefficients.png")

    X = result.prepared.X
    uni: dict[Any, dict[Any, Any]] = {
        row["indicator"]: row for row in result.univariate.to_dict(orient="records")
    }
    cols = list(X.columns)
    if cols:
        ncol = min(3, len(cols))
        nrow = math.ceil(len(cols) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.6 * nrow), squeeze=False)
        for ax, col in zip(axes.flat, cols, strict=False):
            x = X[col].to_numpy(dtype=float)
            ax.scatter(x, y, s=18, color="tab:blue")
            if np.ptp(x) > 0:
                b, a = np.polyfit(x, y, 1)
                grid = np.linspace(x.min(), x.max(), 50)
                ax.plot(grid, a + b * grid, color="tab:red", linewidth=1)
            r, rho = uni[col]["pearson_r"], uni[col]["spearman_rho"]
            ax.set_title(f"{col}: r = {r:.3f}, ρ = {rho:.3f}", fontsize=10)
            ax.set_xlabel(col)
            ax.set_ylabel(label)
        for ax in list(axes.flat)[len(cols) :]:
            ax.axis("off")
        fig.tight_layout()
        _save(fig, out / "univariate.png")
        written.append("univariate.png")

    if not result.bins.empty:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, group in result.bins.groupby("bin_indicator"):
            ax.plot(group["bin"], group["mean_target"], marker="o", label=str(name))
        ax.set_xlabel("bin (0 = lowest indicator values)")
        ax.set_ylabel(f"mean {label}")
        ax.set_title("Loss per bin of the univariate designs")
        ax.legend()
        _save(fig, out / "bins.png")
        written.append("bins.png")
    return written


def _stability_section(stats: dict[str, Any]) -> list[str]:
    """How often each offered indicator was chosen on bootstrap resamples (when measured)."""
    frequency = stats.get("selection_frequency")
    if not frequency:
        return []
    rows = [
        {"indicator": name, "chosen in": f"{100 * float(share):.0f}%"}
        for name, share in sorted(frequency.items(), key=lambda kv: -float(kv[1]))
    ]
    return [
        "## Selection stability",
        "",
        f"The selection rerun on {stats.get('bootstrap_resamples')} bootstrap resamples of the"
        " candidate datasets (rows drawn with replacement): the share of reruns that chose"
        " each offered indicator. One chosen in most reruns is a finding; one chosen in a"
        " minority rests on a few datasets.",
        "",
        _md_table(rows),
    ]
