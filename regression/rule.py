"""A Rule: the fitted linear formula that predicts a finetuned model's loss from mean indicators.

A Rule is frozen and saved as versioned JSON (never pickle), so a rule file can
be read, diffed and trusted. It carries each indicator's configuration
(`params()` of the indicator that produced the column), so selection rebuilds
exactly the indicators the rule was fitted on. Lower predicted loss is better.

A rule also knows where it was fitted: `ranges` holds, for each indicator it uses,
the smallest, mean and largest value among the candidate datasets of the fit (each
value a dataset's mean). A subset whose mean lies outside that span asks the rule
to extrapolate; selection warns about it (and `--within-range` avoids it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import DataError

SCHEMA_VERSION = 1
_KIND = "instructmining.rule"


def _floats(mapping: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in mapping.items()}


@dataclass(frozen=True)
class Rule:
    """`target` ≈ intercept + Σ coefficient·indicator, on the log scale for a log target.

    `coefficients` are on the indicators' own scale (what `predict` uses); when
    the fit standardised the indicators, `standardization` holds their means and
    scales and the coefficients per standard deviation.
    """

    name: str
    intercept: float
    coefficients: dict[str, float]
    target: str = "eval_loss"
    target_transform: str = "log"
    indicators: dict[str, dict[str, Any]] = field(default_factory=dict)
    standardization: dict[str, Any] | None = None
    statistics: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    citation: str = ""
    #: per indicator the rule uses: min, mean and max of the fitted candidates' values
    #: and their number n; empty when not recorded (older files, published rules)
    ranges: dict[str, dict[str, float]] = field(default_factory=dict)
    #: why no range is recorded, or where the recorded one comes from
    ranges_note: str = ""
    schema_version: int = SCHEMA_VERSION
    #: the file the rule was read from ("" when built in code); names it in errors,
    #: not part of the rule's JSON or of equality
    source: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.target_transform not in ("log", "none"):
            raise ValueError(
                f"The 'target_transform' of a Rule must be 'log' or 'none'. "
                f"Got {self.target_transform!r} instead."
            )
        if not math.isfinite(self.intercept) or not all(
            math.isfinite(v) for v in self.coefficients.values()
        ):
            raise ValueError(f"rule {self.name!r}: intercept and coefficients must be finite")
        missing = [f for f in self.coefficients if f not in self.indicators]
        if missing:
            raise ValueError(
                f"rule {self.name!r}: no indicator configuration for {', '.join(missing)}"
            )
        # a checked copy, so the rule does not share (mutable) dicts with its caller
        object.__setattr__(self, "ranges", _checked_ranges(self.ranges, self.coefficients))

    @property
    def features(self) -> tuple[str, ...]:
        """The indicator names the rule uses, in the order of its formula."""
        return tuple(self.coefficients)

    def _columns(self, table: Any) -> dict[str, np.ndarray]:
        import pandas as pd

        if isinstance(table, pd.DataFrame):
            present = set(map(str, table.columns))
            getter = table.__getitem__
        elif isinstance(table, Mapping):
            present = set(map(str, table))
            getter = table.__getitem__
        else:
            raise TypeError(
                f"expected a pandas DataFrame or a mapping of indicator name to values, "
                f"got {type(table).__name__}"
            )
        missing = [f for f in self.features if f not in present]
        if missing:
            raise KeyError(
                f"rule {self.name!r} needs indicator column(s) {', '.join(missing)}, missing "
                f"from the table (it has: {', '.join(sorted(present)) or 'no columns'})"
            )
        return {f: np.atleast_1d(np.asarray(getter(f), dtype="float64")) for f in self.features}

    def linear_predictor(self, table: Any) -> np.ndarray:
        """The rule's value on the target scale (log loss for a log target); NaN where a value is NaN."""
        cols = self._columns(table)
        if not cols:  # an intercept-only rule: one value per row of the table
            if hasattr(table, "index"):
                return np.full(len(table), self.intercept)
            first = next(iter(table.values()), 0.0)
            return np.full(np.atleast_1d(np.asarray(first)).shape[0], self.intercept)
        total = np.full(np.broadcast(*cols.values()).shape, self.intercept, dtype="float64")
        for name, values in cols.items():
            total = total + self.coefficients[name] * values
        return total

    def predict(self, table: Any) -> np.ndarray:
        """Predicted evaluation loss per row (exp of the linear predictor for a log target)."""
        eta = self.linear_predictor(table)
        return np.exp(eta) if self.target_transform == "log" else eta

    def formula(self, digits: int = 5) -> str:
        """The rule as one readable line, e.g. `log(eval_loss) = 1.07 - 0.15·reward`."""
        lhs = f"log({self.target})" if self.target_transform == "log" else self.target
        parts = [f"{self.intercept:.{digits}g}"]
        for name, coef in self.coefficients.items():
            sign = "-" if coef < 0 else "+"
            parts.append(f"{sign} {abs(coef):.{digits}g}·{name}")
        return f"{lhs} = {' '.join(parts)}"

    # --- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON document of the rule."""
        return {
            "kind": _KIND,
            "schema_version": self.schema_version,
            "name": self.name,
            "target": self.target,
            "target_transform": self.target_transform,
            "intercept": self.intercept,
            "coefficients": dict(self.coefficients),
            "indicators": {k: dict(v) for k, v in self.indicators.items()},
            "standardization": self.standardization,
            "statistics": self.statistics,
            "selection": self.selection,
            "provenance": self.provenance,
            "notes": self.notes,
            "citation": self.citation,
            "ranges": {k: dict(v) for k, v in self.ranges.items()},
            "ranges_note": self.ranges_note,
        }

    def to_json(self) -> str:
        """The rule as JSON text (NaN written as null)."""
        return json.dumps(_nan_to_none(self.to_dict()), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """Build a rule from its JSON document; ValueError names what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("a rule must be a JSON object")
        if data.get("kind", _KIND) != _KIND:
            raise ValueError(f"not a rule (kind {data.get('kind')!r})")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise ValueError("the rule has no integer 'schema_version'")
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"rule schema_version {version} is newer than this package reads "
                f"({SCHEMA_VERSION}); upgrade instructmining"
            )
        missing = [k for k in ("name", "intercept", "coefficients") if k not in data]
        if missing:
            raise ValueError(f"the rule lacks field(s) {', '.join(missing)}")
        coefficients = data["coefficients"]
        if not isinstance(coefficients, Mapping):
            raise ValueError("'coefficients' must be an object of indicator name to number")
        indicators = data.get("indicators") or {}
        ranges = data.get("ranges") or {}  # absent in files written before ranges existed
        if not isinstance(ranges, Mapping):
            raise ValueError("'ranges' must be an object of indicator name to {min, mean, max, n}")
        return cls(
            name=str(data["name"]),
            intercept=float(data["intercept"]),
            coefficients=_floats(coefficients),
            target=str(data.get("target", "eval_loss")),
            target_transform=str(data.get("target_transform", "log")),
            indicators={str(k): dict(v) for k, v in indicators.items()},
            standardization=data.get("standardization"),
            statistics=dict(data.get("statistics") or {}),
            selection=dict(data.get("selection") or {}),
            provenance=dict(data.get("provenance") or {}),
            notes=str(data.get("notes", "")),
            citation=str(data.get("citation", "")),
            ranges={str(k): v for k, v in ranges.items()},
            ranges_note=str(data.get("ranges_note") or ""),
            schema_version=version,
        )

    @classmethod
    def from_json(cls, text: str) -> Rule:
        """Parse a rule from JSON text."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the rule as JSON, atomically; refuses to replace a file unless `overwrite`."""
        from instructmining.writers import atomic_path

        target = Path(path)
        if target.exists() and not overwrite:
            from instructmining.errors import OutputExistsError

            raise OutputExistsError(f"{target}: exists already; pass --overwrite to replace it")
        if not target.parent.exists():
            from instructmining.errors import InputError

            raise InputError(f"{target.parent}: the output folder does not exist")
        with atomic_path(target) as tmp:
            tmp.write_text(self.to_json(), encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | Path) -> Rule:
        """Read a rule file; DataError names the file and the problem."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError("no such rule file", path=p) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read the rule: {exc}", path=p) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg})", path=p, line=exc.lineno) from None
        except RecursionError:
            raise DataError("not valid JSON (nested too deeply)", path=p) from None
        except ValueError:  # an integer of more digits than Python converts
            raise DataError("not valid JSON (a number too long to read)", path=p) from None
        try:
            rule = cls.from_dict(data)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise DataError(f"not a valid rule: {_one_line(exc)}", path=p) from None
        return replace(rule, source=str(p))

    # --- display -------------------------------------------------------------------
    def coefficient_rows(self) -> list[dict[str, Any]]:
        """One row per term: estimate, standard error, p-value, 95% interval (when fitted here)."""
        table = self.statistics.get("coefficients", {})
        rows = []
        for term, estimate in [("intercept", self.intercept), *self.coefficients.items()]:
            stats = table.get(term, {})
            rows.append(
                {
                    "term": term,
                    "estimate": estimate,
                    "std_error": stats.get("std_error"),
                    "p_value": stats.get("p_value"),
                    "ci_low": stats.get("ci_low"),
                    "ci_high": stats.get("ci_high"),
                    "standardized": _standardized(self.standardization, term),
                }
            )
        # leave out columns this rule has no values for (a published rule has estimates only)
        empty = [k for k in rows[0] if all(r[k] is None for r in rows)]
        return [{k: v for k, v in r.items() if k not in empty} for r in rows]

    def summary(self) -> str:
        """A plain-text description: formula, coefficient table, fit statistics, notes."""
        lines = [f"Rule {self.name} (schema {self.schema_version})", self.formula(), ""]
        lines.append(_text_table(self.coefficient_rows()))
        stats = self.statistics
        shown = [
            (k, stats[k])
            for k in ("n", "r2", "adj_r2", "f_pvalue", "aic", "bic", "loo_rmse", "kfold_rmse")
            if stats.get(k) is not None
        ]
        if shown:
            lines.append("")
            lines.append("  ".join(f"{k}={_fmt(v)}" for k, v in shown))
        if stats.get("loo_rmse") is not None and stats.get("baseline_loo_rmse") is not None:
            # the honest yardstick: does the rule predict held-out datasets better than
            # their mean loss does?
            folds = stats.get("cv_folds")
            parts = [f"leave-one-out {_fmt(stats['loo_rmse'])}"]
            if stats.get("kfold_rmse") is not None and folds:
                parts.append(f"{folds}-fold {_fmt(stats['kfold_rmse'])}")
            if stats.get("kfold_selection_rmse") is not None and folds:
                parts.append(
                    f"{folds}-fold with the selection repeated "
                    f"{_fmt(stats['kfold_selection_rmse'])}"
                )
            scale = "log loss" if self.target_transform == "log" else "loss"
            lines.append(
                f"Cross-validated RMSE of the {scale}: {', '.join(parts)}; "
                f"intercept only (leave-one-out) {_fmt(stats['baseline_loo_rmse'])}"
            )
        frequency = stats.get("selection_frequency")
        if isinstance(frequency, Mapping) and frequency:
            ranked = sorted(frequency.items(), key=lambda kv: -float(kv[1]))
            lines.append(
                f"Chosen in bootstrap resamples of the rows ({stats.get('bootstrap_resamples')} "
                "reruns of the selection): "
                + ", ".join(f"{name} {100 * float(share):.0f}%" for name, share in ranked)
            )
        lines.append("")
        lines.append("Indicators:")
        for name in self.features:
            params = ", ".join(
                f"{k}={v}" for k, v in self.indicators.get(name, {}).items() if k != "name"
            )
            lines.append(f"  {name}: {params or '(name only; settings not recorded)'}")
        lines.append("")
        lines.extend(self.card_lines())
        lines.extend(self.range_lines())
        lines.append("Lower predicted loss is better.")
        for label, text in (("Notes", self.notes), ("Citation", self.citation)):
            if text:
                lines.append(f"{label}: {text}")
        return "\n".join(lines)

    def card_lines(self) -> list[str]:
        """Where the rule comes from: a paper's setting, or the study it was fitted on."""
        prov = self.provenance
        lines: list[str] = []
        for key in ("paper", "base_model", "datasets", "evaluation_set"):
            if isinstance(prov.get(key), str) and prov[key]:
                lines.append(f"  {key.replace('_', ' ')}: {prov[key]}")
        study = prov.get("study")
        if isinstance(study, Mapping):
            train = study.get("training") or {}
            lines.append(
                f"  study: {study.get('folder')}, configuration {study.get('configuration')}"
            )
            lines.append(
                f"  base model: {study.get('base_model')} ("
                + ", ".join(f"{k} {v}" for k, v in train.items())
                + ")"
            )
            sources = study.get("sources") or {}
            lines.append(
                "  sources: "
                + "; ".join(
                    f"{name} = {src.get('file')}"
                    + (f" read as {src['field_map']}" if src.get("field_map") else "")
                    + (f" ({src['records']:,} records)" if src.get("records") else "")
                    for name, src in sources.items()
                )
            )
            evaluation = study.get("evaluation_set") or {}
            lines.append(
                f"  D_eval: {evaluation.get('records')} records from "
                + ", ".join(evaluation.get("files") or [])
            )
            kinds = ", ".join(f"{v} {k}" for k, v in (study.get("candidate_kinds") or {}).items())
            lines.append(
                f"  candidates: {study.get('candidates')} datasets of "
                f"{study.get('candidate_size')} records" + (f" ({kinds})" if kinds else "")
            )
        if lines:
            lines.insert(0, "Fitted on:")
            lines.append("")
        return lines

    def range_rows(self) -> list[dict[str, Any]]:
        """One row per indicator with a recorded range: indicator, min, mean, max (and n)."""
        ranged = [name for name in self.features if name in self.ranges]
        keys = ["min", "mean", "max"]
        if any("n" in self.ranges[name] for name in ranged):
            keys.append("n")
        rows: list[dict[str, Any]] = []
        for name in ranged:
            rows.append({"indicator": name, **{k: self.ranges[name].get(k) for k in keys}})
        return rows

    def range_lines(self) -> list[str]:
        """The fitted range as text: a table of the recorded ranges, or why there is none."""
        rows = self.range_rows()
        if rows:
            lines = ["Fitted range (min, mean and max of the candidate datasets' mean values):"]
            lines += ["  " + line for line in _text_table(rows).splitlines()]
            unranged = [f for f in self.features if f not in self.ranges]
            if unranged:
                lines.append(f"  no range recorded for {', '.join(unranged)}")
        elif self.features or self.ranges_note:
            lines = ["Fitted range: not recorded."]
            if not self.ranges_note:
                lines.append(
                    "  This rule stores no range (a rule fitted by instructmining records one); "
                    "selection cannot tell when a subset lies outside what it was fitted on."
                )
        else:
            return []
        if self.ranges_note:
            lines.append(f"  {self.ranges_note}")
        return lines

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr>" + "".join(f"<td>{escape(_fmt(row[k]))}</td>" for k in row) + "</tr>"
            for row in self.coefficient_rows()
        )
        head = "".join(
            f"<th>{escape(k)}</th>" for k in self.coefficient_rows()[0]
        )  # there is always the intercept row
        notes = f"<p>{escape(self.notes)}</p>" if self.notes else ""
        card = "\n".join(self.card_lines() + self.range_lines())
        return (
            f"<div><b>Rule {escape(self.name)}</b><br><code>{escape(self.formula())}</code>"
            f"<table><tr>{head}</tr>{rows}</table><pre>{escape(card)}</pre>{notes}</div>"
        )


_RANGE_KEYS = ("min", "mean", "max")


def _checked_ranges(ranges: Any, features: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """`ranges` validated and copied: finite numbers, min <= mean <= max, n a count >= 1."""
    if not isinstance(ranges, Mapping):
        raise ValueError("'ranges' must be an object of indicator name to {min, mean, max, n}")
    checked: dict[str, dict[str, float]] = {}
    for name, entry in ranges.items():
        where = f"the fitted range of {name!r}"
        if name not in features:
            raise ValueError(f"{where}: the rule does not use {name!r}")
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be an object with min, mean, max (and n)")
        unknown = sorted(set(map(str, entry)) - {*_RANGE_KEYS, "n"})
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)}")
        values: dict[str, float] = {}
        for key in _RANGE_KEYS:
            value = entry.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: {key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{where}: {key} must be finite, got {value!r}")
            values[key] = float(value)
        if not values["min"] <= values["mean"] <= values["max"]:
            raise ValueError(
                f"{where}: needs min <= mean <= max, got min {values['min']!r}, "
                f"mean {values['mean']!r}, max {values['max']!r}"
            )
        if "n" in entry:
            n = entry["n"]
            if isinstance(n, float) and n.is_integer():
                n = int(n)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{where}: n must be a whole number >= 1, got {n!r}")
            values["n"] = n
        checked[str(name)] = values
    return checked


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _standardized(block: Mapping[str, Any] | None, term: str) -> float | None:
    if not block:
        return None
    if term == "intercept":
        return block.get("intercept")
    return block.get("coefficients", {}).get(term)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _text_table(rows: Sequence[Mapping[Any, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    cells = [keys, *[[_fmt(r[k]) for k in keys] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    out = []
    for j, row in enumerate(cells):
        out.append(
            "  ".join(
                c.rjust(w) if j and i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, np.generic):
        return _nan_to_none(value.item())
    return value
