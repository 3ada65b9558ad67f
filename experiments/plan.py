"""Plan candidate datasets: random mixtures of sources and univariate bins of one indicator.

Planning is pure and seeded: the same sources, settings and seed give the same
candidates (record ids in the same order) on any machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """One planned training set: its record ids and how it was drawn (`info`)."""

    kind: str  # "mixture" or "univariate"
    record_ids: tuple[str, ...]
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def candidate_id(self) -> str:
        """Content hash of the record ids (order kept): equal sets of draws share it."""
        return ids_hash(self.record_ids)


def ids_hash(ids: Sequence[str]) -> str:
    """16 hex digits of SHA-256 over the ids, one per line."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()[:16]


def allocate(proportions: np.ndarray, size: int, available: Sequence[int]) -> np.ndarray:
    """Integer counts summing to `size`, close to `proportions`, none above `available`.

    Largest-remainder rounding; whatever a source cannot supply is handed to the
    others in proportion to their remaining room.
    """
    avail = np.asarray(available, dtype=np.int64)
    if size > int(avail.sum()):
        raise ValueError(f"size={size} is more than the {int(avail.sum())} records available")
    counts = np.zeros(len(avail), dtype=np.int64)
    weights = np.asarray(proportions, dtype=np.float64).copy()
    remaining = size
    while remaining > 0:
        room = avail - counts
        w = np.where(room > 0, weights, 0.0)
        if w.sum() <= 0:  # the sources with weight are full: spread over those with room
            w = (room > 0).astype(np.float64)
        exact = remaining * w / w.sum()
        add = np.floor(exact).astype(np.int64)
        short = remaining - int(add.sum())
        order = np.argsort(-(exact - add), kind="stable")
        add[order[:short]] += 1
        add = np.minimum(add, room)
        counts += add
        remaining = size - int(counts.sum())
    return counts


def mixture_candidates(
    sources: Mapping[str, Sequence[str]], *, n: int, size: int, seed: int
) -> list[Candidate]:
    """`n` candidates of `size` ids each: Dirichlet(1) proportions over sources, no replacement.

    `info` keeps the drawn proportions (they sum to 1) and the realised counts.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    names = list(sources)
    if n and not names:
        raise ValueError("mixtures need at least one source")
    rng = np.random.default_rng([seed, 1])
    out = []
    for i in range(n):
        props = rng.dirichlet(np.ones(len(names)))
        counts = allocate(props, size, [len(sources[s]) for s in names])
        ids: list[str] = []
        for name, count in zip(names, counts, strict=True):
            pool = sources[name]
            pick = rng.choice(len(pool), size=int(count), replace=False)
            ids.extend(pool[j] for j in sorted(pick.tolist()))
        out.append(
            Candidate(
                "mixture",
                tuple(ids),
                {
                    "index": i,
                    "proportions": {s: float(p) for s, p in zip(names, props, strict=True)},
                    "counts": {s: int(c) for s, c in zip(names, counts, strict=True)},
                },
            )
        )
    return out


def univariate_candidates(
    ids: Sequence[str],
    values: Sequence[float] | np.ndarray,
    *,
    indicator: str,
    bins: int,
    size: int,
    seed: int,
) -> list[Candidate]:
    """Sort records by `values`, cut `bins` equal slices, draw `size` ids from each slice.

    Records with a NaN value are left out. A slice smaller than `size` is used
    whole (its `info["n_records"]` says so). Ties are broken by id, so the order
    does not depend on the input order.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    vals = np.asarray(values, dtype=np.float64)
    if len(vals) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(vals)} values")
    ok = [i for i in range(len(ids)) if not np.isnan(vals[i])]
    ok.sort(key=lambda i: (vals[i], ids[i]))
    if len(ok) < bins:
        raise ValueError(f"{indicator}: {len(ok)} scored records cannot fill {bins} bins")
    rng = np.random.default_rng([seed, 2, *indicator.encode()])
    edges = np.linspace(0, len(ok), bins + 1).round().astype(int)
    out = []
    for b in range(bins):
        members = ok[edges[b] : edges[b + 1]]
        take = min(size, len(members))
        pick = sorted(rng.choice(len(members), size=take, replace=False).tolist())
        chosen = [members[j] for j in pick]
        out.append(
            Candidate(
                "univariate",
                tuple(ids[i] for i in chosen),
                {
                    "indicator": indicator,
                    "bin": b,
                    "bins": bins,
                    "n_records": take,
                    "low": float(vals[members[0]]),
                    "high": float(vals[members[-1]]),
                },
            )
        )
    return out
