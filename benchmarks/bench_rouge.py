"""Benchmark: the generator's ROUGE-L filter against rouge_score, same inputs, one run.

Pool: 10,000 instructions from ../shared/data (the 175 Self-Instruct seeds, the Alpaca
sample, then Dolly). Queries: new instructions (Self-Instruct user-oriented ones) plus
near-copies of pool entries, so that both decisions occur. Each query is filtered the
way the generator does it: dropped if its ROUGE-L F1 with any pool entry (or any query
kept before it) is above 0.7, otherwise added to the pool.

Reference: ``RougeScorer(['rougeL'], use_stemmer=False).score`` on every pair.
Fast: ``instructmining.generation.rouge.RougeLIndex.any_above``.

    python benchmarks/bench_rouge.py [--queries 40] [--pool 10000] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def load_pool(data: Path, size: int) -> list[str]:
    """The first `size` instructions of seeds, then Alpaca, then Dolly."""
    texts = [
        json.loads(x)["instruction"]
        for x in (data / "seeds/self_instruct_seed_tasks_175.jsonl").open()
    ]
    texts += [
        r["instruction"] for r in json.loads((data / "pools/alpaca_random_9k.json").read_text())
    ]
    texts += [r["instruction"] for r in json.loads((data / "pools/dolly_3k.json").read_text())]
    if len(texts) < size:
        sys.exit(f"only {len(texts)} instructions available, asked for {size}")
    return texts[:size]


def load_queries(data: Path, pool: list[str], n: int, seed: int) -> list[str]:
    """About two thirds new instructions, one third near-copies of pool entries."""
    rng = random.Random(seed)
    fresh = [
        json.loads(x)["instruction"]
        for x in (data / "eval/self_instruct_user_oriented_252.jsonl").open()
    ]
    n_copy = n // 3
    copies = [
        " ".join(t.split()[1:]) + " quickly"
        for t in rng.sample([p for p in pool if len(p.split()) > 5], n_copy)
    ]
    queries = rng.sample(fresh, n - n_copy) + copies
    rng.shuffle(queries)
    return queries


def reference(
    pool: list[str], queries: list[str], threshold: float
) -> tuple[list[bool], list[float], float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept = list(pool)
    decisions, best = [], []
    start = time.perf_counter()
    for q in queries:
        scores = [scorer.score(p, q)["rougeL"].fmeasure for p in kept]
        top = max(scores)
        drop = top > threshold
        decisions.append(drop)
        best.append(top)
        if not drop:
            kept.append(q)
    return decisions, best, time.perf_counter() - start


def fast(
    pool: list[str], queries: list[str], threshold: float
) -> tuple[list[bool], float, float, list[float]]:
    from instructmining.generation.rouge import RougeLIndex

    start = time.perf_counter()
    index = RougeLIndex(pool)
    build = time.perf_counter() - start
    decisions = []
    start = time.perf_counter()
    for q in queries:
        drop = index.any_above(q, threshold)
        decisions.append(drop)
        if not drop:
            index.add(q)
    filtering = time.perf_counter() - start
    # the exact maximum, for the identity check (not part of the filter's timing)
    check = RougeLIndex(pool)
    best = []
    for q, drop in zip(queries, decisions, strict=True):
        best.append(check.max_score(q))
        if not drop:
            check.add(q)
    return decisions, build, filtering, best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    pool = load_pool(args.data, args.pool)
    queries = load_queries(args.data, pool, args.queries, args.seed)
    ref_dec, ref_best, ref_s = reference(pool, queries, args.threshold)
    fast_dec, build_s, fast_s, fast_best = fast(pool, queries, args.threshold)

    identical = ref_dec == fast_dec
    same_scores = ref_best == fast_best
    result = {
        "pool": len(pool),
        "queries": len(queries),
        "dropped": sum(ref_dec),
        "decisions_identical": identical,
        "max_scores_identical": same_scores,
        "reference_s": round(ref_s, 4),
        "reference_ms_per_query": round(1000 * ref_s / len(queries), 3),
        "fast_index_build_s": round(build_s, 4),
        "fast_filter_s": round(fast_s, 5),
        "fast_ms_per_query": round(1000 * fast_s / len(queries), 4),
        "speedup_per_query": round(ref_s / fast_s, 1),
        "speedup_including_index_build": round(ref_s / (fast_s + build_s), 1),
    }
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k.ljust(width)}  {v}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not (identical and same_scores):
        sys.exit("decisions or scores differ from rouge_score")


if __name__ == "__main__":
    main()
