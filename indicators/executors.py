"""Where per-record indicator work runs: in this process, or on a pool of workers.

The engine cuts the records it must compute into batches and hands them to an
executor with the method to call on the indicator: "score" (one value per
record) or "transform" (one feature row per record: the per-record phase of a
set-level indicator, e.g. knn6's embeddings). The executor returns, per batch,
the batch's index, the values and the per-record truncation flags, in the
order the batches were given. The engine alone reads and writes the score
cache, so where batches run never changes what is cached or resumed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, Protocol

import numpy as np

from instructmining.indicators.base import Indicator
from instructmining.records import Record

Method = Literal["score", "transform"]
#: (batch index, records)
Batch = tuple[int, Sequence[Record]]
#: (batch index, values (n,) or features (n, d), truncation flags (n,))
Done = tuple[int, np.ndarray, np.ndarray]


class Executor(Protocol):
    """Runs an indicator's per-record method over batches."""

    def map(self, ind: Indicator, method: Method, batches: Iterable[Batch]) -> Iterator[Done]:
        """Results of `getattr(ind, method)(records)` per batch, in the batches' order."""
        ...

    def close(self) -> None:
        """Release workers (a no-op for the local executor)."""
        ...


def run_batch(
    ind: Indicator, method: Method, records: Sequence[Record]
) -> tuple[np.ndarray, np.ndarray]:
    """(values or features, truncation flags) of one batch, checked for shape."""
    n = len(records)
    out = np.asarray(getattr(ind, method)(records), dtype=np.float64 if method == "score" else None)
    if out.shape[:1] != (n,) or (method == "score" and out.ndim != 1):
        raise RuntimeError(
            f"indicator {ind.name!r}.{method} returned shape {out.shape} for {n} records"
        )
    mask = getattr(ind, "truncated_mask_", None)
    flags = np.asarray(mask, dtype=bool) if mask is not None else np.zeros(n, dtype=bool)
    if flags.shape != (n,):
        flags = np.zeros(n, dtype=bool)
    return out, flags


class LocalExecutor:
    """Runs every batch in this process, one after another."""

    def map(self, ind: Indicator, method: Method, batches: Iterable[Batch]) -> Iterator[Done]:
        for index, records in batches:
            values, flags = run_batch(ind, method, records)
            yield index, values, flags

    def close(self) -> None:
        return None
