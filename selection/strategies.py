"""Orderings of a pool: by a Rule's prediction, at random, or longest response first.

Every ordering is a function of the records' content (their ids), never of their
position, so permuting the input permutes the selection and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from instructmining.records import Record

STRATEGIES = ("rule", "random", "longest")


def _id_rank(records: Sequence[Record]) -> np.ndarray:
    """Rank of each record's id (ties between equal ids broken by position)."""
    ids = np.array([r.id for r in records], dtype=object)
    order = np.argsort(ids, kind="stable")
    rank = np.empty(len(records), dtype=np.int64)
    rank[order] = np.arange(len(records))
    return rank


def order_by_value(values: np.ndarray, records: Sequence[Record]) -> np.ndarray:
    """Indices sorted by `values` ascending (NaN last), ties by record id."""
    vals = np.asarray(values, dtype=np.float64)
    nan = np.isnan(vals)
    return np.lexsort((_id_rank(records), np.where(nan, 0.0, vals), nan))


def random_order(records: Sequence[Record], seed: int) -> np.ndarray:
    """A seeded random order that depends on the ids only: hash(seed, id) ascending."""
    keys = [hashlib.sha256(f"{seed}:{r.id}".encode()).hexdigest() for r in records]
    return np.lexsort((_id_rank(records), np.array(keys, dtype=object)))


def longest_order(records: Sequence[Record]) -> np.ndarray:
    """Longest output (in words) first, ties by record id: the paper's length baseline."""
    words = np.array([len(r.output.split()) for r in records], dtype=np.float64)
    return order_by_value(-words, records)
