"""The tables of a strategy comparison: losses with intervals, subset means, paired differences.

`Comparison` reads the run rows `study compare` stored (one per strategy and seed)
and says what they show: each strategy's mean eval loss with a Student-t interval
and its spread over seeds, the rule's prediction for each subset, the subset means
against the rule's fitted range, which rule indicator moved the prediction, the
make-up of the subsets by a source field, and paired differences within a seed
against ``random`` and against ``rule``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import ParameterError
from instructmining.regression import Rule
from instructmining.selection.strategies import parse

#: the strategy every other one is paired with
BASELINE = "random"


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a Student-t interval for the mean; NaN bounds for one value."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if x.size else math.nan
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def _fmt(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(number) else f"{number:.4g}"


def _loss(value: Any) -> str:
    """A loss to 4 decimals, as the measured ones; n/a when missing."""
    return "n/a" if value is None or math.isnan(float(value)) else f"{float(value):.4f}"


@dataclass
class Comparison:
    """Per-run losses, per-strategy intervals, subset means and paired differences."""

    runs: Any  # DataFrame: strategy, seed, eval_loss, subset_mean_<indicator>, ...
    folder: Path
    #: the study indicators whose subset means are tabled (default: every subset_mean_ column)
    indicators: list[str] = field(default_factory=list)
    #: the rule's fitted range by indicator ({min, mean, max}), shown under the means
    ranges: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the rule compared: its prediction for each strategy's subset means is tabled
    #: beside the measured loss (how far to trust the rule where it was used)
    rule: Rule | None = None
    #: `--by FIELD`: per strategy, the share of each value of that source field among
    #: its subsets' records (averaged over its runs), and the field's name
    composition: dict[str, dict[str, float]] = field(default_factory=dict)
    by: str = ""
    #: runs the comparison asked for (strategies x seeds); fewer done: a partial summary
    planned: int = 0

    def _strategies(self) -> list[str]:
        return list(dict.fromkeys(self.runs["strategy"]))

    def _seeded(self) -> set[str]:
        """The strategies whose subset changes with the seed (random; any it cannot read)."""
        out = set()
        for name in self._strategies():
            try:
                if parse(str(name)).seed_matters(self.rule):
                    out.add(str(name))
            except ParameterError:  # a plugin strategy no longer installed: claim nothing
                out.add(str(name))
        return out

    def mean_columns(self) -> list[str]:
        """The indicators with a subset mean column."""
        names = self.indicators or [
            c.removeprefix("subset_mean_")
            for c in self.runs.columns
            if c.startswith("subset_mean_") and c != "subset_mean_output_words"
        ]
        return [n for n in names if f"subset_mean_{n}" in self.runs.columns]

    def per_strategy(self) -> list[dict[str, Any]]:
        """Mean eval loss and its 95% interval for each strategy, and what the rule predicted."""
        predicted = self.predicted()
        out = []
        for strategy, group in self.runs.groupby("strategy", sort=False):
            losses = group["eval_loss"].astype(float)
            mean, low, high = mean_interval(losses.tolist())
            row = {
                "strategy": strategy,
                "runs": len(group),
                "mean_loss": mean,
                "ci_low": low,
                "ci_high": high,
                # the noise figure: the finetuning seed's alone where the subset is fixed
                "sd": float(losses.std(ddof=1)) if len(group) > 1 else math.nan,
            }
            if "token_budget" in group and group["token_budget"].notna().any():
                # a token budget: the strategies differ in how many records fit into it
                row["records"] = float(group["size"].astype(float).mean())
            if predicted:
                row["predicted_loss"] = predicted.get(str(strategy), math.nan)
            if "train_responses_cut" in group and group["train_responses_cut"].notna().any():
                # long records are trained on their start only: how much of the subset
                row["responses_cut"] = float(group["train_responses_cut"].astype(float).mean())
            if "train_target_tokens" in group and group["train_target_tokens"].notna().any():
                # response tokens the loss was taken on: longer subsets train on more of them
                row["trained_tokens"] = float(group["train_target_tokens"].astype(float).mean())
            out.append(row)
        return out

    def predicted(self) -> dict[str, float]:
        """The rule's predicted loss for each strategy's subset means ({} without the means).

        A rule that ranks well predicts the measured order of the strategies; a large
        gap where a subset leaves the fitted range shows the rule extrapolating.
        """
        if self.rule is None or not self.rule.features:
            return {}
        rows = self.subset_means()
        if not rows or any(f not in rows[0] for f in self.rule.features):
            return {}
        return {
            str(r["strategy"]): float(self.rule.predict({f: [r[f]] for f in self.rule.features})[0])
            for r in rows
        }

    def attribution(self, baseline: str = BASELINE) -> list[dict[str, Any]]:
        """Per strategy: what moves the rule's prediction away from `baseline`'s, by indicator.

        For each rule feature, coefficient x (strategy's subset mean - baseline's), on
        the rule's target scale (log loss for a log target), and their sum: which
        indicator drove the rule's choice, and by how much it expected to gain. Empty
        without a rule with features, the baseline or the features' subset means.
        """
        if self.rule is None or not self.rule.features:
            return []
        rows = {str(r["strategy"]): r for r in self.subset_means()}
        base = rows.get(baseline)
        if base is None or any(f not in base for f in self.rule.features):
            return []
        out = []
        for strategy, row in rows.items():
            if strategy == baseline:
                continue
            parts = {
                f: self.rule.coefficients[f] * (float(row[f]) - float(base[f]))
                for f in self.rule.features
            }
            out.append({"strategy": strategy, **parts, "total": sum(parts.values())})
        return out

    def subset_means(self) -> list[dict[str, Any]]:
        """Per strategy: the mean over its runs of each indicator's subset mean."""
        columns = self.mean_columns()
        out = []
        for strategy, group in self.runs.groupby("strategy", sort=False):
            row: dict[str, Any] = {"strategy": strategy, "runs": len(group)}
            for name in columns:
                values = group[f"subset_mean_{name}"].astype(float)
                row[name] = float(values.mean()) if values.notna().any() else math.nan
            out.append(row)
        return out

    def _differences(self, first: str, second: str, wide: Any) -> dict[str, Any]:
        diff = (wide[first] - wide[second]).dropna()
        mean, low, high = mean_interval(diff.tolist())
        return {
            "difference": f"{first} - {second}",
            "pairs": len(diff),
            "mean": mean,
            "ci_low": low,
            "ci_high": high,
            "wins": int((diff < 0).sum()),
        }

    def _wide(self) -> Any:
        return self.runs.pivot(index="seed", columns="strategy", values="eval_loss")

    def paired(self, against: str = "rule") -> list[dict[str, Any]]:
        """Mean of (`against` − other) per seed, with a 95% interval; negative favours `against`.

        `wins` counts the seeds where `against` has the lower loss.
        """
        wide = self._wide()
        if against not in wide.columns:
            return []
        return [
            self._differences(against, other, wide)
            for other in self._strategies()
            if other != against and other in wide.columns
        ]

    def versus(self, baseline: str = BASELINE) -> list[dict[str, Any]]:
        """Mean of (strategy − `baseline`) per seed for every other strategy; negative beats it.

        `wins` counts the seeds where the strategy has the lower loss than `baseline`.
        """
        wide = self._wide()
        if baseline not in wide.columns:
            return []
        return [
            self._differences(other, baseline, wide)
            for other in self._strategies()
            if other != baseline and other in wide.columns
        ]

    def markdown(self) -> str:
        """The loss, subset-mean and paired-difference tables as markdown."""
        rows = self.per_strategy()
        predicts = any("predicted_loss" in r for r in rows)
        cuts = any("responses_cut" in r for r in rows)
        tokens = any("trained_tokens" in r for r in rows)
        counted = any("records" in r for r in rows)
        extra = (
            (" records |" if counted else "")
            + (" rule's prediction |" if predicts else "")
            + (" responses cut at max length |" if cuts else "")
            + (" response tokens trained |" if tokens else "")
        )
        lines = []
        if self.planned > len(self.runs):
            lines += [
                f"**Partial**: {len(self.runs)} of {self.planned} runs finished; the same "
                "`study compare` command resumes the rest.",
                "",
            ]
        if counted:
            budget = int(self.runs["token_budget"].dropna().iloc[0])
            lines += [
                f"Equal token budget: every subset holds as many of its strategy's records "
                f"as fit into {budget} response tokens.",
                "",
            ]
        lines += [
            "| strategy | runs | mean eval loss | 95% interval | sd over seeds |" + extra,
            "|---|---|---|---|---|" + "---|" * (counted + predicts + cuts + tokens),
        ]
        for r in rows:
            cut, trained = r.get("responses_cut"), r.get("trained_tokens")
            lines.append(
                f"| {r['strategy']} | {r['runs']} | {r['mean_loss']:.4f} | "
                f"{_interval(r['ci_low'], r['ci_high'], '.4f')} | {_loss(r['sd'])} |"
                + (f" {_fmt(r.get('records'))} |" if counted else "")
                + (f" {_loss(r.get('predicted_loss'))} |" if predicts else "")
                + (f" {'n/a' if cut is None else f'{cut:.1f}'} |" if cuts else "")
                + (f" {'n/a' if trained is None else f'{trained:.0f}'} |" if tokens else "")
            )
        seeded = self._seeded()
        fixed = [str(r["strategy"]) for r in rows if str(r["strategy"]) not in seeded]
        if any(r["runs"] > 1 for r in rows if str(r["strategy"]) in fixed):
            lines += [
                "",
                f"sd over seeds: for {', '.join(fixed)} the subset is the same at every seed, "
                "so it is the finetuning seed's noise alone; for the others it includes "
                "drawing the subset.",
            ]
        columns = self.mean_columns()
        if columns:
            lines += [
                "",
                "Subset mean of each indicator (averaged over a strategy's runs):",
                "",
                "| strategy | " + " | ".join(columns) + " |",
                "|---|" + "---|" * len(columns),
            ]
            for r in self.subset_means():
                lines.append(
                    f"| {r['strategy']} | " + " | ".join(_fmt(r[c]) for c in columns) + " |"
                )
            ranged = [c for c in columns if c in self.ranges]
            if ranged:
                cells = [
                    f"[{_fmt(self.ranges[c]['min'])}, {_fmt(self.ranges[c]['max'])}]"
                    if c in self.ranges
                    else ""
                    for c in columns
                ]
                lines.append("| *rule's fitted range* | " + " | ".join(cells) + " |")
        moved = self.attribution()
        if moved:
            features = list(self.rule.features) if self.rule else []
            scale = (
                "log eval loss"
                if self.rule and self.rule.target_transform == "log"
                else "eval loss"
            )
            lines += [
                "",
                f"What moves the rule's prediction against {BASELINE} ({scale}; coefficient x "
                f"difference of subset means; negative: the rule expects a lower loss):",
                "",
                "| strategy | " + " | ".join(features) + " | total |",
                "|---|" + "---|" * (len(features) + 1),
            ]
            for r in moved:
                cells = [f"{r[f]:+.4f}" for f in [*features, "total"]]
                lines.append(f"| {r['strategy']} | " + " | ".join(cells) + " |")
        if self.composition:
            values = sorted({v for shares in self.composition.values() for v in shares})
            lines += [
                "",
                f"Share of each `{self.by}` among a strategy's records (averaged over its runs):",
                "",
                "| strategy | " + " | ".join(values) + " |",
                "|---|" + "---|" * len(values),
            ]
            for strategy, shares in self.composition.items():
                cells = [f"{100 * shares.get(v, 0.0):.0f}%" for v in values]
                lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
        for title, rows in (
            (f"seeds where it beats {BASELINE}", self.versus()),
            ("seeds where rule wins", self.paired()),
        ):
            if not rows:
                continue
            lines += [
                "",
                f"| paired difference | pairs | mean | 95% interval | {title} |",
                "|---|---|---|---|---|",
            ]
            for r in rows:
                lines.append(
                    f"| {r['difference']} | {r['pairs']} | {r['mean']:+.4f} | "
                    f"{_interval(r['ci_low'], r['ci_high'], '+.4f')} | {r['wins']}/{r['pairs']} |"
                )
        return "\n".join(lines) + "\n"


def _interval(low: float, high: float, spec: str) -> str:
    """`[low, high]`, or a note that one run gives no interval."""
    if math.isnan(low) or math.isnan(high):
        return "n/a (needs 2 seeds)"
    return f"[{low:{spec}}, {high:{spec}}]"
