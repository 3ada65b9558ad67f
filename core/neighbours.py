"""Nearest-neighbour search over unit embeddings: exact below a size, approximate above it.

One module for every place that looks for neighbours (knn6, the diversity pass of
`select`, k-center, `check --semantic`), so that they share the same choice of search.

- `kth_neighbours`: each query's distance to its k-th nearest row of a base (the
  query itself excluded). Up to `EXACT_MAX` base rows the search is exact (numpy,
  float64: the values knn6 has always had). Above it, with faiss installed, an
  approximate index (inverted lists, "ivf", then if those miss the recall target an
  HNSW graph, "hnsw") proposes candidates in seconds where exact search takes
  minutes, and each candidate's distance is recomputed exactly, so a value is either
  exact or too large. Its recall of the true k-th neighbour is measured against
  exact search on a seeded sample of `RECALL_SAMPLE` queries and returned for the
  caller's summary. Without faiss the search stays exact and says so in
  `Neighbours.note`.
- `pairs_within`: every pair of rows with cosine similarity at least a threshold
  (exact; faiss's BLAS range search above `EXACT_MAX`, confirmed in float64).
- `squared_distances`: squared Euclidean distances from one row to all rows.

Distances are Euclidean (0..2 on unit vectors). Rows may be zero (an empty text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from instructmining.errors import ParameterError

#: `index` values: "auto" is exact up to `EXACT_MAX` base rows and approximate above
INDEXES = ("auto", "exact", "hnsw", "ivf")
#: the indexes "auto" tries above `EXACT_MAX`, in turn, until one reaches the recall
#: target on the tuning sample: IVF is the fastest on clustered vectors (100k x 384 in
#: 6.5 s at recall 1.0); HNSW reaches the target on spread-out ones, such as TF-IDF +
#: SVD vectors of real instructions, where IVF does not (docs/indicators.md)
AUTO_TRIES = ("ivf", "hnsw")
#: largest base searched exactly by "auto"
EXACT_MAX = 20_000
#: queries whose k-th neighbour is also found exactly to measure the recall
RECALL_SAMPLE = 1000
#: HNSW graph: links per node, candidate list at build time, and the search-time
#: candidate lists tried in turn until the tuning sample's recall reaches the target
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = (64, 128, 256, 512)
#: IVF: inverted lists per sqrt(rows), lists each row is filed in (tried in turn),
#: k-means iterations and training rows per list
IVF_LISTS_PER_SQRT = 2
IVF_PROBES = (3, 6, 12, 24, 48)
IVF_KMEANS_ITERATIONS = 10
IVF_TRAIN_PER_LIST = 40
#: queries (drawn apart from the reported sample) that tune the approximate search:
#: the IVF lists per row, the HNSW search's candidate list
TUNE_SAMPLE = 500
#: recall the IVF search is tuned to reach before it is used
RECALL_TARGET = 0.99
#: largest base searched exactly when the approximate indexes miss the target; above
#: it exact search (O(n^2): hours at 1M rows on 2 cores) is out of reach, so "auto"
#: builds only its first index (a second one's memory and build time at that size
#: are not worth a chance) and the widest search tried is kept, its recall reported
EXACT_FALLBACK_MAX = 200_000

_BLOCK = 1024  # query rows per distance block: bounds memory at 1024 x n doubles
_TOL = 1e-9  # an approximate k-th distance this close to the exact one is a hit
_MARGIN = 8  # extra candidates of the float32 flat search behind the recall's truth


@dataclass(frozen=True)
class Neighbours:
    """What `kth_neighbours` found.

    `distances`: float64, one per query, NaN where fewer than k rows are left.
    `ids`: (queries, k) base rows nearest first, -1 where missing (when asked for).
    `index`: the search that ran ("exact", "hnsw", "ivf"). `recall`: the share of
    `sampled` queries whose k-th distance equals the exact one (None for exact
    search). `note`: why an approximate index was asked for but not used.
    """

    distances: np.ndarray
    ids: np.ndarray | None
    index: str
    recall: float | None = None
    sampled: int = 0
    note: str = ""

    def describe(self) -> str:
        """A few words for a summary line: the search and, if approximate, its recall."""
        if self.recall is None:
            return f"{self.index} neighbour search" + (f" ({self.note})" if self.note else "")
        return (
            f"{self.index} neighbour search, recall of the k-th neighbour "
            f"{self.recall:.4f} on {self.sampled} sampled queries"
        ) + (f" ({self.note})" if self.note else "")


def check_index(index: Any, *, option: str = "index") -> str:
    """`index` if it is one of `INDEXES`; otherwise a one-line `ParameterError`."""
    if index not in INDEXES:
        raise ParameterError(
            f"The {option!r} setting must be one of {', '.join(INDEXES)}; got {index!r}."
        )
    return str(index)


def faiss_module() -> Any | None:
    """The faiss module, or None when it is not installed (searches then stay exact)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def resolve_index(index: str, n_base: int | None, *, threshold: int | None = None) -> str:
    """The search `index` means for a base of `n_base` rows: "exact", "hnsw", "ivf" or
    "approximate" (the indexes of `AUTO_TRIES` in turn).

    "auto" is exact up to `threshold` (default `EXACT_MAX`) rows or for an unknown
    size, "approximate" above. Approximate indexes need faiss: without it, "exact".
    """
    check_index(index)
    limit = EXACT_MAX if threshold is None else threshold
    if index == "auto":
        index = "exact" if n_base is None or n_base <= limit else "approximate"
    if index != "exact" and faiss_module() is None:
        return "exact"
    return index


def kth_neighbours(
    queries: np.ndarray,
    base: np.ndarray | None = None,
    *,
    k: int,
    exclude: np.ndarray | None = None,
    index: str = "auto",
    threshold: int | None = None,
    with_ids: bool = False,
    seed: int = 0,
) -> Neighbours:
    """Each query's Euclidean distance to its k-th nearest row of `base`.

    `base` defaults to `queries` (then each row excludes itself); otherwise
    `exclude[i]` is a base row query i may not use, or -1. `index` and `threshold`
    choose the search (see `resolve_index`); `seed` draws the recall sample.
    """
    check_index(index)
    if base is None:
        base = queries
        if exclude is None:
            exclude = np.arange(len(queries))
    kind = resolve_index(index, len(base), threshold=threshold)
    limit = EXACT_MAX if threshold is None else threshold
    wanted = index in ("hnsw", "ivf") or (index == "auto" and len(base) > limit)
    note = ""
    if wanted and faiss_module() is None:
        note = "faiss is not installed, so the search was exact: pip install faiss-cpu"
    if kind == "exact" or len(queries) == 0 or k > len(base):
        dist, ids = _exact(queries, base, k, exclude, with_ids=with_ids)
        return Neighbours(dist, ids, "exact", note=note)
    # one exact search for two seeded samples of queries: one tunes the indexes, the
    # other (never seen by the tuning) measures the recall that is reported
    n_q = len(queries)
    drawn = np.random.default_rng(seed).permutation(n_q)[: RECALL_SAMPLE + TUNE_SAMPLE]
    report = np.sort(drawn[:RECALL_SAMPLE])
    tune = np.sort(drawn[RECALL_SAMPLE:]) if len(drawn) > RECALL_SAMPLE else report
    both = np.concatenate([report, tune])
    truth = _flat_search(
        np.asarray(queries)[both], base, k, None if exclude is None else exclude[both]
    )[0]
    tries = AUTO_TRIES if kind == "approximate" else (kind,)
    (dist, ids), ran, tuned = _approximate(
        queries, base, k, exclude, tries, seed, (tune, truth[len(report) :])
    )
    if ran == "exact":
        reached = ", ".join(f"{name} {recall:.3f}" for name, recall in tuned.items())
        note = f"tuning recall {reached}, below {RECALL_TARGET}: exact search"
        return Neighbours(dist, ids if with_ids else None, "exact", note=note)
    hit = float(_hits(dist[report], truth[: len(report)]).mean())
    if hit < RECALL_TARGET:
        why = (
            f"exact search of {len(base):,} rows is out of reach above {EXACT_FALLBACK_MAX:,}"
            if len(base) > EXACT_FALLBACK_MAX
            else "the tuning sample reached it"
        )
        note = (
            f"below the recall target {RECALL_TARGET}: {why}; a missed neighbour only makes a "
            "distance larger"
        )
    return Neighbours(dist, ids if with_ids else None, ran, hit, len(report), note)


def kth_neighbor_distance(
    queries: np.ndarray, base: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Exact Euclidean distance from each query row to its k-th nearest row of `base`.

    `exclude[i]` is an index into `base` that query i may not use (itself), or -1.
    Where fewer than k rows remain, the distance is NaN.
    """
    return _exact(queries, base, k, exclude)[0]


def _exact(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    *,
    with_ids: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Blocked float64 search: (k-th distances, k nearest ids if asked)."""
    q = np.asarray(queries, dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    out = np.full(len(q), np.nan)
    ids = np.full((len(q), k), -1, dtype=np.int64) if with_ids else None
    if len(q) == 0:
        return out, ids
    b_sq = np.einsum("ij,ij->i", b, b)
    for start in range(0, len(q), _BLOCK):
        block = q[start : start + _BLOCK]
        d2 = np.einsum("ij,ij->i", block, block)[:, None] + b_sq[None, :] - 2.0 * (block @ b.T)
        np.maximum(d2, 0.0, out=d2)  # rounding can make a zero distance slightly negative
        available = np.full(len(block), len(b))
        if exclude is not None:
            ex = exclude[start : start + len(block)]
            rows = np.nonzero(ex >= 0)[0]
            d2[rows, ex[rows]] = np.inf
            available[rows] -= 1
        ok = available >= k
        if ok.any() and k <= len(b):
            kth = np.partition(d2[ok], k - 1, axis=1)[:, k - 1]
            out[start : start + len(block)][ok] = np.sqrt(kth)
        if ids is not None and len(b):
            top = min(k, len(b))
            near = np.argpartition(d2, top - 1, axis=1)[:, :top]
            near_d = np.take_along_axis(d2, near, axis=1)
            near = np.take_along_axis(near, np.argsort(near_d, axis=1, kind="stable"), axis=1)
            near[np.isinf(np.take_along_axis(d2, near, axis=1))] = -1
            ids[start : start + len(block), :top] = near
    return out, ids


def _approximate(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    tries: tuple[str, ...],
    seed: int,
    tuning: tuple[np.ndarray, np.ndarray],
) -> tuple[tuple[np.ndarray, np.ndarray], str, dict[str, float]]:
    """((k-th distances, ids), search that ran, tuning recall of each index tried):
    index candidates re-ranked in float64.

    Each index of `tries` is tuned in turn on the `tuning` queries (positions, exact
    k-th distances) until one reaches RECALL_TARGET. When none does, the search is
    exact up to EXACT_FALLBACK_MAX rows; above it only the first index is built and
    its widest search is kept.
    """
    faiss = faiss_module()
    assert faiss is not None
    b32 = np.ascontiguousarray(base, dtype=np.float32)
    q32 = b32 if queries is base else np.ascontiguousarray(queries, dtype=np.float32)
    best: tuple[float, str, Callable[[], np.ndarray]] | None = None
    tuned: dict[str, float] = {}
    for kind in tries:
        if best is not None and len(base) > EXACT_FALLBACK_MAX:
            break
        tuner = _hnsw_tuned if kind == "hnsw" else _ivf_tuned
        recall, search = tuner(faiss, queries, base, q32, b32, k, exclude, seed, tuning)
        tuned[kind] = recall
        if best is None or recall > best[0]:
            best = (recall, kind, search)
        del search  # a worse index's structures go before the next one is built
        if recall >= RECALL_TARGET:
            break
    assert best is not None
    recall, kind, search = best
    if recall < RECALL_TARGET and len(base) <= EXACT_FALLBACK_MAX:
        return _flat_search(queries, base, k, exclude), "exact", tuned
    return _rerank(queries, base, search(), k, exclude), kind, tuned


def _flat_search(
    queries: np.ndarray, base: np.ndarray, k: int, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search by faiss's flat index (float32, with a margin of candidates for
    rounding), re-ranked in float64: (k-th distances, ids)."""
    faiss = faiss_module()
    assert faiss is not None
    b32 = np.ascontiguousarray(base, dtype=np.float32)
    flat = faiss.IndexFlatL2(b32.shape[1])
    flat.add(b32)
    want = min(len(base), k + 1 + _MARGIN)
    cand = flat.search(np.ascontiguousarray(queries, dtype=np.float32), want)[1]
    return _rerank(queries, base, cand.astype(np.int64), k, exclude)


def _hits(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Which found k-th distances are the exact ones (both NaN counts as found)."""
    return (found <= truth + _TOL) | (np.isnan(found) & np.isnan(truth))


def _rerank(
    queries: np.ndarray,
    base: np.ndarray,
    cand: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(k-th distances, k nearest ids) among candidate base rows (-1: none), in float64.

    The excluded row is dropped and distances are recomputed from the rows as given,
    so a neighbour found by an approximate index has exactly the exact search's value.
    """
    cand = cand.copy()
    if exclude is not None:
        cand[cand == np.asarray(exclude, dtype=np.int64)[:, None]] = -1
    q_all, b_all = np.asarray(queries), np.asarray(base)
    safe = np.where(cand >= 0, cand, 0)
    d2 = np.full(cand.shape, np.inf)
    step = 2048  # rows per block: 2048 x candidates x d doubles
    for start in range(0, len(cand), step):
        rows = b_all[safe[start : start + step]].astype(np.float64)
        diff = rows - q_all[start : start + step, None, :].astype(np.float64)
        d2[start : start + step] = np.einsum("ijk,ijk->ij", diff, diff)
    d2[cand < 0] = np.inf
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(cand, order, axis=1)
    near = np.take_along_axis(d2, order, axis=1)
    ids[np.isinf(near)] = -1
    kth = near[:, k - 1] if near.shape[1] >= k else np.full(len(cand), np.inf)
    return np.where(np.isinf(kth), np.nan, np.sqrt(kth)), ids


#: a tuned index: (recall on the tuning queries, a search giving every query's candidates)
_Tuned = tuple[float, Callable[[], np.ndarray]]


def _tuning_recall(
    queries: np.ndarray,
    base: np.ndarray,
    found: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    tuning: tuple[np.ndarray, np.ndarray],
) -> float:
    """Share of the tuning queries whose candidates `found` hold the exact k-th distance."""
    tune, truth = tuning
    tune_ex = None if exclude is None else exclude[tune]
    return float(
        _hits(_rerank(np.asarray(queries)[tune], base, found, k, tune_ex)[0], truth).mean()
    )


def _hnsw_tuned(
    faiss: Any,
    queries: np.ndarray,
    base: np.ndarray,
    q32: np.ndarray,
    b32: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    seed: int,
    tuning: tuple[np.ndarray, np.ndarray],
) -> _Tuned:
    """One HNSW graph; its search-time candidate list (efSearch) is the first of
    HNSW_EF_SEARCH whose tuning recall reaches RECALL_TARGET, else the widest (a
    wider list costs search time, not another build). faiss's HNSW takes no seed."""
    want = k + (0 if exclude is None else 1)
    idx = faiss.IndexHNSWFlat(b32.shape[1], HNSW_M)
    idx.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    idx.add(b32)
    tune_q = np.ascontiguousarray(q32[tuning[0]])
    recall = 0.0
    for ef in HNSW_EF_SEARCH:
        idx.hnsw.efSearch = max(ef, want)
        found = idx.search(tune_q, want)[1].astype(np.int64)
        recall = _tuning_recall(queries, base, found, k, exclude, tuning)
        if recall >= RECALL_TARGET:
            break
    return recall, lambda: idx.search(q32, want)[1].astype(np.int64)


def _ivf_tuned(
    faiss: Any,
    queries: np.ndarray,
    base: np.ndarray,
    q32: np.ndarray,
    b32: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    seed: int,
    tuning: tuple[np.ndarray, np.ndarray],
) -> _Tuned:
    """Inverted lists giving k (+1 with `exclude`) candidate base rows per query (-1: none).

    k-means (faiss, seeded) splits the base into about IVF_LISTS_PER_SQRT * sqrt(n)
    lists; each base row is filed in its `probe` nearest lists and each query scans
    the list of its nearest centroid, one matrix product per list (faiss's
    IndexIVFFlat visits the same rows one query at a time: several times slower
    here). `probe` is the first of IVF_PROBES whose tuning recall reaches
    RECALL_TARGET (spread-out data needs more lists), else the widest tried.
    """
    n, d = b32.shape
    want = k + (0 if exclude is None else 1)
    lists = max(1, min(n // 39, int(IVF_LISTS_PER_SQRT * np.sqrt(n))))
    rng = np.random.default_rng(seed + 1)
    train = b32[np.sort(rng.choice(n, size=min(n, IVF_TRAIN_PER_LIST * lists), replace=False))]
    kmeans = faiss.Kmeans(
        d, lists, niter=IVF_KMEANS_ITERATIONS, seed=seed, verbose=False, min_points_per_centroid=1
    )
    kmeans.train(train)
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(kmeans.centroids)
    # row ids as int32 (n < 2**31): at 1M rows x 48 lists every copy counts
    nearest = quantizer.search(b32, min(lists, max(IVF_PROBES)))[1].astype(np.int32)
    home = nearest[:, 0].copy() if q32 is b32 else quantizer.search(q32, 1)[1].ravel()
    members: list[np.ndarray] = []
    recall = 0.0
    for probe in IVF_PROBES:
        members = []  # the previous probe's lists go before the next are built
        members = _file(nearest[:, :probe], lists)
        found = _scan(faiss, q32, b32, tuning[0], home, members, want)
        recall = _tuning_recall(queries, base, found, k, exclude, tuning)
        if recall >= RECALL_TARGET or probe >= lists:
            break
    chosen = members
    return recall, lambda: _scan(faiss, q32, b32, np.arange(len(q32)), home, chosen, want)


def _file(nearest: np.ndarray, lists: int) -> list[np.ndarray]:
    """Base rows (int32) of each list, in row order, given each row's lists (-1: none).

    One int64 key per (list, row) pair, list in the high half and row in the low
    half, sorted in place: the fewest copies of an array that holds p entries per row.
    """
    key = nearest.astype(np.int64)
    key <<= 32
    key |= np.arange(len(nearest), dtype=np.int64)[:, None]
    key = key.ravel()
    if (nearest < 0).any():
        key = key[key >= 0]
    key.sort()
    cuts = np.searchsorted(key, np.arange(1, lists, dtype=np.int64) << 32)
    rows = key.astype(np.int32)  # the low half: the row
    del key
    return np.split(rows, cuts)


def _scan(
    faiss: Any,
    q32: np.ndarray,
    b32: np.ndarray,
    which: np.ndarray,
    home: np.ndarray,
    members: list[np.ndarray],
    want: int,
) -> np.ndarray:
    """`want` nearest rows (float32) for the queries `which`, each within its home list."""
    out = np.full((len(which), want), -1, dtype=np.int64)
    order = np.argsort(home[which], kind="stable")
    groups = np.split(order, np.searchsorted(home[which][order], np.arange(1, len(members))))
    for lst, pos in enumerate(groups):
        cand = members[lst]
        if not len(pos) or not len(cand):
            continue
        top = min(want, len(cand))
        found = faiss.knn(q32[which[pos]], np.ascontiguousarray(b32[cand]), top)[1]
        out[pos, :top] = np.where(found >= 0, cand[np.maximum(found, 0)], -1)
    return out


def squared_distances(vectors: np.ndarray, norms: np.ndarray, row: int) -> np.ndarray:
    """Squared Euclidean distances from `vectors[row]` to every row (`norms`: squared norms)."""
    return np.maximum(norms + norms[row] - 2.0 * (vectors @ vectors[row]), 0.0)


def pairs_within(
    vectors: np.ndarray, min_cosine: float, *, threshold: int | None = None
) -> list[tuple[int, int, float]]:
    """Pairs (a < b) of rows whose dot product (cosine of unit rows) is at least `min_cosine`.

    Exact either way: numpy float64 blocks up to `threshold` rows (default
    `EXACT_MAX`); above it, with faiss, its BLAS range search in float32 proposes
    pairs a little below the threshold and float64 dot products decide.
    """
    emb = np.asarray(vectors, dtype=np.float64)
    faiss = faiss_module()
    limit = EXACT_MAX if threshold is None else threshold
    out: list[tuple[int, int, float]] = []
    if len(emb) <= limit or faiss is None or emb.ndim != 2 or emb.shape[1] == 0:
        for start in range(0, len(emb), _BLOCK):
            sims = emb[start : start + _BLOCK] @ emb.T
            rows, cols = np.nonzero(sims >= min_cosine)
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                a = start + r
                if c > a:
                    out.append((a, c, float(sims[r, c])))
        return out
    e32 = np.ascontiguousarray(emb, dtype=np.float32)
    idx = faiss.IndexFlatIP(e32.shape[1])
    idx.add(e32)
    for start in range(0, len(e32), _BLOCK * 8):
        lims, _, found = idx.range_search(e32[start : start + _BLOCK * 8], min_cosine - 1e-4)
        for r in range(len(lims) - 1):
            a = start + r
            cols = np.sort(found[lims[r] : lims[r + 1]])
            cols = cols[cols > a]
            if len(cols):
                sims = emb[cols] @ emb[a]
                keep = sims >= min_cosine
                out.extend(
                    (a, int(c), float(s)) for c, s in zip(cols[keep], sims[keep], strict=True)
                )
    return out
