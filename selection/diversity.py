"""Score-first, diversity-aware selection: walk the ranking, skip near-duplicates.

Up to `neighbours.EXACT_MAX` records the walk compares each candidate with every
kept one. Above it (with faiss, and a threshold of at least `GRAPH_MIN_COSINE`)
the pairs closer than the threshold are found once by
`instructmining.neighbours.pairs_within` and the walk only looks them up: the same
result, without the O(n K d) comparisons.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from instructmining import neighbours
from instructmining.errors import ParameterError

#: below this threshold the pairs are too many to list: the walk compares directly
GRAPH_MIN_COSINE = 0.5


def diverse_prefix(
    order: np.ndarray, embeddings: np.ndarray, threshold: float, limit: int | None = None
) -> tuple[np.ndarray, int]:
    """Keep records in `order` whose cosine similarity to every kept one is <= `threshold`.

    `embeddings` are L2-normalised rows indexed like the records. Stops after `limit`
    kept records. Returns (kept indices in order, number rejected on the way).
    """
    if not 0.0 < threshold <= 1.0:
        raise ParameterError(
            f"The 'diversity' threshold must be in (0, 1]. Got {threshold!r} instead."
        )
    emb = np.asarray(embeddings, dtype=np.float64)
    capacity = len(order) if limit is None else min(len(order), limit)
    if (
        len(emb) > neighbours.EXACT_MAX
        and threshold >= GRAPH_MIN_COSINE
        and neighbours.faiss_module() is not None
    ):
        return _walk_pairs(order, emb, threshold, capacity)
    kept_vecs = np.empty((capacity, emb.shape[1] if emb.ndim == 2 else 0))
    kept: list[int] = []
    rejected = 0
    for i in order:
        if len(kept) >= capacity:
            break
        v = emb[i]
        if kept and float(np.max(kept_vecs[: len(kept)] @ v)) > threshold:
            rejected += 1
            continue
        kept_vecs[len(kept)] = v
        kept.append(int(i))
    return np.array(kept, dtype=np.int64), rejected


def _walk_pairs(
    order: np.ndarray, emb: np.ndarray, threshold: float, capacity: int
) -> tuple[np.ndarray, int]:
    """`diverse_prefix` on a list of the close pairs (cosine > threshold) found up front."""
    close: dict[int, list[int]] = defaultdict(list)
    for a, b, sim in neighbours.pairs_within(emb, threshold):
        if sim > threshold:
            close[a].append(b)
            close[b].append(a)
    taken = np.zeros(len(emb), dtype=bool)
    kept: list[int] = []
    rejected = 0
    for i in order:
        if len(kept) >= capacity:
            break
        if any(taken[j] for j in close.get(int(i), ())):
            rejected += 1
            continue
        taken[i] = True
        kept.append(int(i))
    return np.array(kept, dtype=np.int64), rejected
