"""KNN-6 at scale: time and recall of the 6th neighbour for exact and approximate searches.

Usage: python benchmarks/bench_neighbours.py [--n 100000] [--dims 384] [--threads 2]
       [--queries 2000] [--searches numpy,flat,sklearn,ivf,hnsw] [--real]

Vectors: a two-level mixture of Gaussians on the unit sphere (200 topics x 10
subtopics), which has the clustered structure of text embeddings; uniform random
high-dimensional vectors are a degenerate case for every approximate index. The
exact searches (numpy float64 = knn6 up to `neighbours.EXACT_MAX`, faiss flat,
sklearn brute force) are timed on `--queries` queries against the whole base and
scaled to all n (their cost is linear in the queries); the approximate ones
(`instructmining.neighbours`, "ivf" and "hnsw") run on everything, recall measured
as the module reports it (1,000 seeded queries against exact search). `--real`
adds the shared pools' texts (dolly 3k + alpaca 9k) embedded by knn6's TF-IDF +
SVD at 384 dimensions. Peak RSS is the process's high-water mark during each search
(reset before it through /proc/self/clear_refs on Linux; it includes the data, held
once in float32). Measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
POOLS = REPO.parent / "shared" / "data" / "pools"


def mixture(n: int, dims: int, seed: int = 0) -> np.ndarray:
    """Unit float32 rows: topic + subtopic + noise, normalised (built in chunks, so
    that the data's own peak memory is its float32 size)."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(200, dims)) / np.sqrt(dims)
    leaves = np.repeat(topics, 10, axis=0) + 0.7 * rng.normal(size=(2000, dims)) / np.sqrt(dims)
    x = np.empty((n, dims), dtype=np.float32)
    for start in range(0, n, 50_000):
        m = min(n, start + 50_000) - start
        part = leaves[rng.integers(0, 2000, m)] + 0.8 * rng.normal(size=(m, dims)) / np.sqrt(dims)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        x[start : start + m] = part
    return x


def _reset_peak() -> None:
    """Reset the process's peak resident memory (Linux: clear_refs 5), if allowed."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mib() -> float:
    """Peak resident memory since the last `_reset_peak` (Linux), else of the run, MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _row(name: str, n: int, seconds: float, recall: str, how: str) -> None:
    peak = _peak_mib()
    print(f"| {name} | {n:,} | {seconds:.1f} | {recall} | {peak:,.0f} | {how} |", flush=True)
    _reset_peak()


def run(x: np.ndarray, label: str, queries: int, searches: list[str], k: int = 6) -> None:
    from sklearn.neighbors import NearestNeighbors

    from instructmining import neighbours

    n = len(x)
    print(f"\n{label}: {n:,} x {x.shape[1]}\n")
    print("| search | n | seconds | recall of the 6th neighbour | peak RSS MiB | how |")
    print("|---|---|---|---|---|---|")
    _reset_peak()
    rng = np.random.default_rng(1)
    q = np.sort(rng.choice(n, size=min(n, queries), replace=False))
    scale = n / len(q)

    how = f"{len(q):,} queries, scaled"
    if "numpy" in searches:
        t = time.perf_counter()
        neighbours.kth_neighbor_distance(x[q], x, k, q)
        _row("exact numpy float64 (knn6 today)", n, (time.perf_counter() - t) * scale, "1", how)
    if "flat" in searches:
        t = time.perf_counter()
        neighbours._flat_search(x[q], x, k, q)
        _row("exact faiss flat", n, (time.perf_counter() - t) * scale, "1", how)
    if "sklearn" in searches:
        t = time.perf_counter()
        NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x[q])
        _row("sklearn brute force", n, (time.perf_counter() - t) * scale, "1", how)
    for kind in [s for s in ("ivf", "hnsw") if s in searches]:
        t = time.perf_counter()
        found = neighbours.kth_neighbours(x, k=k, index=kind)
        recall = "-" if found.recall is None else f"{found.recall:.4f}"
        how = f"all {n:,} queries" + (f"; {found.note}" if found.note else "")
        _row(f"{found.index} (instructmining.neighbours)", n, time.perf_counter() - t, recall, how)


def real_texts(dims: int) -> np.ndarray:
    """knn6's TF-IDF + SVD embedding of the shared pools' texts."""
    from instructmining.indicators.knn import KNN, example_text
    from instructmining.records import make_record

    rows = []
    for name in ("dolly_3k.json", "alpaca_random_9k.json"):
        rows += json.loads((POOLS / name).read_text())
    records = [make_record(r["instruction"], r.get("input", ""), r["output"]) for r in rows]
    print(f"embedding {len(records):,} texts ({', '.join(example_text(records[0])[:40].split())})")
    return KNN(dims=dims).embed(records).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=2000, help="queries timed per exact search")
    parser.add_argument("--searches", default="numpy,flat,sklearn,ivf,hnsw")
    parser.add_argument("--real", action="store_true", help="also the shared pools' texts")
    args = parser.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        t = time.perf_counter()
        x = mixture(args.n, args.dims)
        print(f"data: {time.perf_counter() - t:.1f} s; {args.threads} threads")
        searches = args.searches.split(",")
        run(x, "two-level Gaussian mixture", args.queries, searches)
        if args.real:
            t = time.perf_counter()
            emb = real_texts(args.dims)
            print(f"embedded in {time.perf_counter() - t:.1f} s")
            run(emb, "shared pools, TF-IDF + SVD", args.queries, searches)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the whole run: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
