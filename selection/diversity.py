"""Score-first, diversity-aware selection: walk the ranking, skip near-duplicates."""

from __future__ import annotations

import numpy as np

from instructmining.errors import ParameterError


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
