"""The experiment table: read it, check it, and turn it into a design matrix and a target.

One row per finetuned dataset, one column per indicator (the dataset's mean
value), a loss column, anything else kept as metadata. Every problem a user can
fix is an error naming the file, the column or the rows; a column that cannot
help the fit (constant, all missing, a copy of others) is dropped with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from instructmining.errors import DataError

TARGET_TRANSFORMS = ("log", "none")
#: columns that name a row in messages, first found wins
ID_COLUMNS = ("candidate_id", "dataset", "name", "id")
#: how many row labels an error message lists before "and N more"
_MAX_LISTED = 8


class FitWarning(UserWarning):
    """Something in the table was dropped or is numerically doubtful; the fit goes on."""


@dataclass(frozen=True)
class PreparedTable:
    """The checked numbers a fit runs on, and what was set aside to get them."""

    X: pd.DataFrame
    y: pd.Series
    loss: pd.Series
    features: tuple[str, ...]
    target_transform: str
    row_labels: tuple[str, ...]
    dropped_features: dict[str, str] = field(default_factory=dict)
    dropped_rows: tuple[str, ...] = ()


def read_table(path: str | Path) -> pd.DataFrame:
    """Read an experiment table from .csv, .csv.gz, .tsv or .parquet."""
    p = Path(path)
    if not p.exists():
        raise DataError("no such file", path=p)
    name = p.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(p)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(p)
        if name.endswith((".tsv", ".tsv.gz")):
            return pd.read_csv(p, sep="\t")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the table: {exc}", path=p) from None
    raise DataError("unknown table type; expected .csv, .csv.gz, .tsv or .parquet", path=p)


def table_metadata(path: str | Path) -> dict[str, Any]:
    """The `instructmining` key of a Parquet file's metadata (a study's results carry it), or {}."""
    import json

    p = Path(path)
    if not p.name.lower().endswith(".parquet"):
        return {}
    import pyarrow.parquet as pq

    meta = pq.read_schema(p).metadata or {}
    raw = meta.get(b"instructmining")
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def as_frame(table: Any) -> pd.DataFrame:
    """A DataFrame from a DataFrame or a mapping of column name to values."""
    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, Mapping):
        columns = {k: np.atleast_1d(np.asarray(v)) for k, v in table.items()}
        return pd.DataFrame(columns)
    raise TypeError(
        f"expected a pandas DataFrame or a mapping of column name to values, "
        f"got {type(table).__name__}"
    )


def row_labels(frame: pd.DataFrame) -> tuple[str, ...]:
    """A readable label per row: its id column's value, else its 1-based row number."""
    for col in ID_COLUMNS:
        if col in frame.columns and frame[col].notna().all():
            return tuple(f"{col}={v}" for v in frame[col])
    return tuple(f"row {i + 1}" for i in range(len(frame)))


def _listed(labels: Sequence[str]) -> str:
    shown = ", ".join(labels[:_MAX_LISTED])
    if len(labels) > _MAX_LISTED:
        shown += f" and {len(labels) - _MAX_LISTED} more"
    return shown


def needed_rows(n_features: int) -> int:
    """Fewest datasets a fit with `n_features` indicators needs: parameters (+ intercept) + 2."""
    return n_features + 1 + 2


def prepare_table(
    table: Any,
    *,
    features: Sequence[str],
    loss: str = "eval_loss",
    target_transform: str = "log",
    dropna: bool = False,
    source: str | Path | None = None,
) -> PreparedTable:
    """Check `table` and return the design matrix, the target and what was dropped.

    Raises DataError (naming `source`, the column or the rows) for a missing or
    non-numeric column, missing values (unless `dropna`), non-positive losses with
    a log target and too few rows; warns (FitWarning) when it drops a constant,
    all-missing or perfectly collinear indicator.
    """
    if target_transform not in TARGET_TRANSFORMS:
        raise ValueError(
            f"The 'target_transform' parameter must be one of {TARGET_TRANSFORMS}. "
            f"Got {target_transform!r} instead."
        )
    frame = as_frame(table).reset_index(drop=True)
    features = list(dict.fromkeys(features))
    if not features:
        raise DataError("no indicator columns to fit on; name them with --features", path=source)
    missing = [c for c in [loss, *features] if c not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)}; the table has: "
            f"{', '.join(map(str, frame.columns))}",
            path=source,
        )
    for col in [loss, *features]:
        if not pd.api.types.is_numeric_dtype(frame[col]) or pd.api.types.is_bool_dtype(frame[col]):
            raise DataError(
                f"column {col!r} is not numeric (dtype {frame[col].dtype})",
                path=source,
                where=f"column {col}",
            )
    labels = row_labels(frame)
    data = frame[[loss, *features]].astype("float64")

    dropped: dict[str, str] = {}
    for col in features:
        values = data[col].to_numpy()
        finite = values[~np.isnan(values)]
        if finite.size == 0:
            dropped[col] = "all values missing"
        elif np.ptp(finite) == 0.0:
            dropped[col] = f"constant (every value is {finite[0]:g})"
    for col, why in dropped.items():
        warnings.warn(f"indicator column {col!r} dropped: {why}", FitWarning, stacklevel=2)
    kept = [c for c in features if c not in dropped]

    bad = data[[loss, *kept]].isna() | np.isinf(data[[loss, *kept]])
    bad_rows = np.flatnonzero(bad.any(axis=1).to_numpy())
    dropped_rows: tuple[str, ...] = ()
    if bad_rows.size:
        names = [labels[i] for i in bad_rows]
        cols = [c for c in bad.columns if bad[c].any()]
        if not dropna:
            raise DataError(
                f"missing or infinite values in {_listed(names)} (columns {', '.join(cols)}); "
                "fill them or pass --dropna to leave those rows out",
                path=source,
            )
        dropped_rows = tuple(names)
        warnings.warn(
            f"{len(names)} row(s) with missing values left out: {_listed(names)}",
            FitWarning,
            stacklevel=2,
        )
        keep_mask = ~bad.any(axis=1).to_numpy()
        data = data[keep_mask].reset_index(drop=True)
        labels = tuple(label for label, k in zip(labels, keep_mask, strict=True) if k)

    y_raw = data[loss]
    if target_transform == "log":
        nonpos = np.flatnonzero((y_raw <= 0).to_numpy())
        if nonpos.size:
            raise DataError(
                f"column {loss!r} has non-positive losses in {_listed([labels[i] for i in nonpos])}; "
                "a log target needs positive losses (or use --target-transform none)",
                path=source,
            )
        y = np.log(y_raw)
    else:
        y = y_raw.copy()
    y.name = loss

    # A row-count check before the collinearity check: its message is the useful one.
    if len(data) < needed_rows(1) or len(data) < 3:
        raise DataError(
            f"{len(data)} dataset(s) is too few to fit a rule; at least {needed_rows(1)} are "
            f"needed for one indicator, {needed_rows(len(kept))} for all {len(kept)}",
            path=source,
        )

    X = data[kept]
    for col, why in collinear_columns(X).items():
        dropped[col] = why
        warnings.warn(f"indicator column {col!r} dropped: {why}", FitWarning, stacklevel=2)
    kept = [c for c in kept if c not in dropped]
    if not kept:
        raise DataError("no usable indicator column is left after dropping", path=source)
    return PreparedTable(
        X=data[kept],
        y=y,
        loss=y_raw,
        features=tuple(kept),
        target_transform=target_transform,
        row_labels=labels,
        dropped_features=dropped,
        dropped_rows=dropped_rows,
    )


def collinear_columns(X: pd.DataFrame, *, rtol: float = 1e-8) -> dict[str, str]:
    """Columns that are an exact linear combination of the intercept and earlier columns.

    The choice is stable: columns are taken in the given order and the later of a
    collinear set is the one dropped, so the same table always keeps the same ones.
    """
    out: dict[str, str] = {}
    kept: list[str] = []
    n = len(X)
    for col in X.columns:
        v = _unit(X[col].to_numpy(dtype=float))
        basis = np.column_stack([np.ones(n), *[_unit(X[k].to_numpy(dtype=float)) for k in kept]])
        coef, *_ = np.linalg.lstsq(basis, v, rcond=None)
        resid = v - basis @ coef
        if float(np.linalg.norm(resid)) <= rtol * max(float(np.linalg.norm(v)), 1.0):
            partners = [k for k, c in zip(kept, coef[1:], strict=True) if abs(c) > 1e-6]
            others = ", ".join(partners) if partners else "the intercept"
            out[str(col)] = f"perfectly collinear with {others} (the earlier column(s) kept)"
        else:
            kept.append(str(col))
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / (sd if sd > 0 else 1.0)
