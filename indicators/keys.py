"""Keys that identify records and sets of records in the score cache.

A record's key is its id plus a hash of its content, so a record edited under
the same id is rescored. A set's fingerprint is an order-independent hash of
its records' keys. The sample a set-level indicator fits on, when the set is
larger than it reads, is the records with the smallest keys: deterministic,
independent of the input order, and a uniform sample since keys are hashes.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Sequence

from instructmining.records import Record

#: most records a set-level indicator fits on (knn6's tfidf-svd space, the n-gram
#: models); a larger set is fitted on its sample by key and transformed batch by batch
FIT_SAMPLE = 50_000


def record_key(record: Record) -> str:
    """Cache key of one record (24 hex digits)."""
    blob = json.dumps(
        [record.id, record.instruction, record.input, record.output], ensure_ascii=False
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def record_keys(records: Sequence[Record]) -> list[str]:
    """Cache key of each record."""
    return [record_key(r) for r in records]


def set_fingerprint(keys: Iterable[str]) -> str:
    """Order-independent hash of a multiset of record keys."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:24]


def fit_sample(records: Sequence[Record], limit: int | None) -> list[Record]:
    """The records a set-level fit reads: all of them, or the `limit` with the smallest keys."""
    if limit is None or len(records) <= limit:
        return list(records)
    return smallest_keys(((record_key(r), r) for r in records), limit)


def smallest_keys(keyed: Iterable[tuple[str, Record]], limit: int) -> list[Record]:
    """The records of the `limit` smallest keys (ties by position), in key order; streams."""
    best = heapq.nsmallest(limit, ((k, i, r) for i, (k, r) in enumerate(keyed)))
    return [r for _, _, r in best]
