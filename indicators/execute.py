"""Running planned indicators over a stream of records, through the score cache.

The records come from a `RecordSource`: a list in memory, or a file read again
batch by batch for every pass, so that memory grows with the batch and the
number of records (a few numbers per record), never with the file. One pass
reads the record keys; then each indicator runs:

- a record-level indicator over the records the cache does not hold, in chunks
  handed to an `Executor` (this process, or Ray actors); each chunk's scores are
  committed as it returns, so a killed run resumes with the first unfinished
  chunk and ends with exactly the values of an uninterrupted run;
- a set-level indicator that runs in phases (`Indicator.phased`): `fit` once on
  the set or its key-ordered sample, `transform` in chunks through the executor
  (per-record features such as embeddings, cached per record when they depend
  on the record alone), then `finish` on all features at once. A new record
  costs its own features plus the cheap finishing pass;
- any other set-level indicator on the whole set in one call.

Values of set-level indicators are cached under a fingerprint of the set. The
engine alone touches the cache: executors only compute. Indicators computed in
plain arithmetic give bit-identical values however the run was cut; a model's
outputs can move in the last float32 bits with the batch they ran in (padding
changes the shapes of its matrix products), as in any batched inference.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from instructmining.errors import InputError
from instructmining.indicators.base import Indicator
from instructmining.indicators.cache import ScoreCache
from instructmining.indicators.executors import Executor, LocalExecutor, Method
from instructmining.indicators.keys import record_keys, set_fingerprint, smallest_keys
from instructmining.progress import progress_bar
from instructmining.records import Record

CHUNK = 2048  # records per call and per cache commit for record-level indicators
#: the same for indicators that run a model: a kill loses minutes of work at most
MODEL_CHUNK = 256
MODEL_BACKENDS = ("causal-lm", "transformers", "unieval", "sentence-transformers")


class RecordSource(Protocol):
    """Records in a fixed order, readable more than once."""

    def batches(self) -> Iterator[Sequence[Record]]:
        """The records from the first, in batches."""
        ...


@dataclass
class ListSource:
    """Records held in memory."""

    records: Sequence[Record]
    batch_size: int = CHUNK

    def batches(self) -> Iterator[Sequence[Record]]:
        for start in range(0, len(self.records), self.batch_size):
            yield self.records[start : start + self.batch_size]


def cache_key(ind: Indicator, keys: Sequence[str]) -> str:
    """The key an indicator's scores of these records are cached under."""
    parts: dict[str, Any] = {"params": ind.key(), "files": ind.fingerprints()}
    if ind.set_dependent():
        parts["set"] = set_fingerprint(keys)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


#: settings of a set-level indicator that choose how its features are combined, not
#: the features themselves (knn6's neighbour search)
_FINISH_ONLY = ("index", "fit_sample")


def feature_key(ind: Indicator) -> str:
    """The key a phased indicator's per-record features are cached under (no set in it)."""
    params = {k: v for k, v in ind.params().items() if k not in _FINISH_ONLY}
    blob = json.dumps(
        {"features": params, "files": ind.fingerprints()}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class IndicatorRun:
    """What scoring one indicator did: values computed vs served from the cache, time, truncation."""

    computed: int = 0
    cached: int = 0
    seconds: float = 0.0
    truncated: int = 0
    #: the neighbour search a set-level indicator ran (index, recall, sampled, note), if any
    neighbours: dict[str, Any] | None = None
    #: a phased indicator's per-record features (embeddings): computed vs from the cache
    features_computed: int | None = None
    features_cached: int | None = None
    #: a derived indicator: the indicator whose run this one transformed (its counts are 0)
    derived_from: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON summaries)."""
        rate = self.computed / self.seconds if self.computed and self.seconds > 0 else None
        out: dict[str, Any] = {
            "computed": self.computed,
            "cached": self.cached,
            "seconds": round(self.seconds, 4),
            "records_per_s": None if rate is None else round(rate, 1),
            "truncated": self.truncated,
        }
        if self.derived_from:
            out["derived_from"] = self.derived_from
        if self.features_computed is not None:
            out["features_computed"] = self.features_computed
            out["features_cached"] = self.features_cached
        if self.neighbours is not None:
            out["neighbours"] = dict(self.neighbours)
        return out


@dataclass
class ScoreTable:
    """The result of a scoring run: one value per record and indicator, and how it was made."""

    ids: list[str]
    #: indicator column -> float64 values, aligned with `ids`
    columns: dict[str, np.ndarray]
    #: indicator name -> its params (what fixes the values)
    indicators: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, IndicatorRun] = field(default_factory=dict)
    #: indicators the profile left out, with the reason
    left_out: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def frame(self) -> Any:
        """A pandas DataFrame: `id` then one column per indicator."""
        import pandas as pd

        return pd.DataFrame({"id": np.array(self.ids, dtype=object), **self.columns})

    def run_dicts(self) -> dict[str, dict[str, Any]]:
        """Each indicator's run as a plain dict."""
        return {name: run.to_dict() for name, run in self.runs.items()}


def compute(
    source: RecordSource,
    indicators: Sequence[Indicator],
    *,
    store: ScoreCache | None = None,
    executor: Executor | None = None,
    progress: bool = False,
    chunk_size: int = CHUNK,
) -> ScoreTable:
    """Score every record of `source` with every indicator (see the module docstring)."""
    if chunk_size < 1:
        raise ValueError(f"The 'chunk_size' parameter of score must be >= 1. Got {chunk_size}.")
    runner = executor or LocalExecutor()
    ids: list[str] = []
    keys: list[str] = []
    for batch in source.batches():
        ids.extend(r.id for r in batch)
        keys.extend(record_keys(batch))
    columns: dict[str, np.ndarray] = {}
    runs: dict[str, IndicatorRun] = {}
    scored: dict[str, tuple[np.ndarray, IndicatorRun]] = {}  # by the scored indicator's key
    users: dict[str, list[tuple[Indicator, Indicator]]] = {}  # (indicator, base) per key
    for ind in indicators:  # one bar per indicator: its own rate and ETA
        base = ind.derived_from() or ind  # a derived indicator scores (and caches) its base
        base.expect(len(keys))  # before key(): knn6's key depends on the set's size
        done = scored.get(base.key())
        if done is None:
            with progress_bar(len(keys), ind.name, enabled=progress) as bar:
                job = _Job(base, source, keys, store, runner, bar, chunk_size)
                done = scored[base.key()] = (job.run(), job.report)
        users.setdefault(base.key(), []).append((ind, base))
        columns[ind.name] = np.asarray(ind.derive(done[0]), dtype=np.float64)
    for key, group in users.items():  # the run counts once: on the base, else the first user
        report = scored[key][1]
        owner = next((i for i, b in group if i is b), group[0][0])
        for ind, base in group:
            if ind is owner:
                report.derived_from = "" if ind is base else base.name
                runs[ind.name] = report
            else:
                runs[ind.name] = IndicatorRun(truncated=report.truncated, derived_from=base.name)
    runs = {ind.name: runs[ind.name] for ind in indicators}
    return ScoreTable(ids, columns, {ind.name: ind.params() for ind in indicators}, runs)


class _Job:
    """One indicator over the source."""

    def __init__(
        self,
        ind: Indicator,
        source: RecordSource,
        keys: Sequence[str],
        store: ScoreCache | None,
        executor: Executor,
        bar: Any,
        chunk_size: int,
    ) -> None:
        self.ind = ind
        self.source = source
        self.keys = keys
        self.store = store
        self.executor = executor
        self.bar = bar
        self.chunk = chunk_size
        if getattr(ind, "backend", "") in MODEL_BACKENDS:
            self.chunk = min(chunk_size, MODEL_CHUNK)
        self.report = IndicatorRun()
        self.moved = 0  # records the indicator reported itself since the last chunk

    def run(self) -> np.ndarray:
        began = time.perf_counter()
        n = len(self.keys)
        ind = self.ind
        ind.expect(n)  # before the cache key: knn6's search (and key) depends on the set's size
        key = ""
        if self.store is not None:
            key = cache_key(ind, self.keys)
            self.store.register(key, ind.name, {**ind.params(), "fingerprints": ind.fingerprints()})
            found, values, truncated = self.store.get(key, self.keys)
        else:
            found = np.zeros(n, dtype=bool)
            values = np.full(n, np.nan)
            truncated = np.zeros(n, dtype=bool)
        self.report.cached = int(found.sum())
        ind.progress_ = self._tick
        try:
            if not ind.set_dependent():
                self._per_record(found, values, truncated, key)
            elif n and not found.all():
                values, truncated = self._set_level()
                self.report.computed, self.report.cached = n, 0
                if self.store is not None:
                    self.store.put(key, self.keys, values, truncated)
            else:
                self.bar.update(n)
        finally:
            ind.progress_ = None
        self.report.truncated += int(truncated.sum())
        self.report.seconds = time.perf_counter() - began
        return values

    # --- progress --------------------------------------------------------------------------

    def _tick(self, k: int) -> None:
        self.moved += k
        self.bar.update(k)

    def _advance(self, k: int) -> None:
        """Move the bar to the end of a chunk of `k` records, less what the indicator reported."""
        self.bar.update(max(0, k - self.moved))
        self.moved = 0

    # --- passes over the source --------------------------------------------------------------

    def _chunks(self) -> Iterator[tuple[int, Sequence[Record]]]:
        """(position of the first record, records) chunks, each checked against the keys read."""
        pos = 0
        for batch in self.source.batches():
            if record_keys(batch) != list(self.keys[pos : pos + len(batch)]):
                raise InputError(
                    f"the input changed while it was being scored (at record {pos + 1}); "
                    "score a file nobody is writing to"
                )
            for start in range(0, len(batch), self.chunk):
                yield pos + start, batch[start : start + self.chunk]
            pos += len(batch)
        if pos != len(self.keys):
            raise InputError(
                f"the input changed while it was being scored ({pos} records instead of "
                f"{len(self.keys)}); score a file nobody is writing to"
            )

    def _pending(
        self, done: np.ndarray, method: Method
    ) -> tuple[Iterator[tuple[int, Sequence[Record]]], dict[int, tuple[np.ndarray, int]]]:
        """Chunks of the records not `done`, for the executor, and each one's (positions, size)."""
        where: dict[int, tuple[np.ndarray, int]] = {}

        def chunks() -> Iterator[tuple[int, Sequence[Record]]]:
            for start, part in self._chunks():
                todo = np.nonzero(~done[start : start + len(part)])[0]
                if not len(todo):
                    self._advance(len(part))
                    continue
                where[start] = (todo + start, len(part))
                yield start, [part[int(i)] for i in todo]

        return chunks(), where

    # --- record-level ----------------------------------------------------------------------

    def _per_record(
        self, found: np.ndarray, values: np.ndarray, truncated: np.ndarray, key: str
    ) -> None:
        chunks, where = self._pending(found, "score")
        for start, got, flags in self.executor.map(self.ind, "score", chunks):
            todo, size = where.pop(start)
            values[todo] = got
            truncated[todo] = flags
            self.report.computed += len(todo)
            if self.store is not None:  # one transaction per chunk: a kill loses at most this one
                self.store.put(key, [self.keys[int(i)] for i in todo], got, flags)
            self._advance(size)

    # --- set-level -------------------------------------------------------------------------

    def _set_level(self) -> tuple[np.ndarray, np.ndarray]:
        ind = self.ind
        n = len(self.keys)
        if not ind.phased():  # the whole set in memory, one call
            records = [r for batch in self.source.batches() for r in batch]
            values = np.asarray(ind.score(records), dtype=np.float64)
            if values.shape != (n,):
                raise RuntimeError(
                    f"indicator {ind.name!r} returned shape {values.shape}, expected ({n},)"
                )
            self.report.neighbours = getattr(ind, "neighbours_", None)
            self.bar.update(max(0, n - self.moved))
            return values, _truncation(ind, n)
        limit = ind.fit_size()
        if limit is not None:
            ind.fit(self._sample(limit), n)
        features, truncated = self._features()
        values = np.asarray(ind.finish(features), dtype=np.float64)
        if values.shape != (n,):
            raise RuntimeError(
                f"indicator {ind.name!r} returned shape {values.shape}, expected ({n},)"
            )
        self.report.neighbours = getattr(ind, "neighbours_", None)
        return values, truncated

    def _sample(self, limit: int) -> list[Record]:
        """The records the fit reads: all, or the `limit` with the smallest keys."""
        if len(self.keys) <= limit:
            return [r for batch in self.source.batches() for r in batch]
        keyed = (
            (self.keys[pos + i], r) for pos, part in self._chunks() for i, r in enumerate(part)
        )
        return smallest_keys(keyed, limit)

    def _features(self) -> tuple[np.ndarray, np.ndarray]:
        """Every record's `transform` output, from the feature cache where it can be."""
        n = len(self.keys)
        ind = self.ind
        fkey = ""
        cache = self.store if ind.features_cacheable() else None
        done = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        out: np.ndarray | None = None
        rows: list[Any] = []
        if cache is not None:
            fkey = feature_key(ind)
            cache.register(fkey, ind.name, {"features_of": ind.params()})
            done, rows, truncated = cache.get_vectors(fkey, self.keys)
            self.report.features_cached = int(done.sum())
            self.report.features_computed = 0

        def place(positions: np.ndarray, part: np.ndarray) -> None:
            nonlocal out
            if out is None:
                shape = (n, *part.shape[1:])
                out = np.zeros(shape, dtype=part.dtype)
                for i in np.nonzero(done)[0]:
                    out[i] = rows[i]
            out[positions] = part

        chunks, where = self._pending(done, "transform")
        for start, part, flags in self.executor.map(ind, "transform", chunks):
            todo, size = where.pop(start)
            place(todo, part)
            truncated[todo] = flags
            if cache is not None:
                cache.put_vectors(fkey, [self.keys[int(i)] for i in todo], part, flags)
                self.report.features_computed = (self.report.features_computed or 0) + len(todo)
            self._advance(size)
        if out is None:  # every row came from the cache
            out = np.stack([np.asarray(r) for r in rows]) if rows else np.empty((0, 0))
        return out, truncated


def _truncation(ind: Indicator, n: int) -> np.ndarray:
    """Per-record truncation flags an indicator left after `score` (none if it cannot say)."""
    mask = getattr(ind, "truncated_mask_", None)
    if mask is not None:
        arr = np.asarray(mask, dtype=bool)
        if arr.shape == (n,):
            return arr
    return np.zeros(n, dtype=bool)


def open_cache(cache: str | Path | ScoreCache | None) -> tuple[ScoreCache | None, bool]:
    """(the cache, whether the caller opened it and must close it)."""
    if cache is None or isinstance(cache, ScoreCache):
        return cache, False
    return ScoreCache(cache), True
