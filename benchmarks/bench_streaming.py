"""`score --profile lite` on 10k, 100k and 1M records: wall time and peak memory.

The pools are built from the shared data (alpaca_random_9k and dolly_3k, 12k
records): record n takes the instruction and input of one pool record and the
response of another, both drawn with a fixed seed, so every record is distinct
and reads like instruction data. Each size is scored in a fresh process with
no cache (`score FILE -o OUT --profile lite --no-cache -q`); the peak resident
memory is the child's `ru_maxrss` (under `--engine ray`, the driver's alone: Ray's
actors run in processes the local Ray starts, outside it). Per-indicator seconds come from the output's
summary. Prints a Markdown table.

    python benchmarks/bench_streaming.py --sizes 10000,100000,1000000 --work /tmp/imbench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "pools"


def build_pool(path: Path, n: int, seed: int = 0) -> None:
    """Write `n` distinct records paired from the shared pools (see the module docstring)."""
    from instructmining.readers import read_records

    base = []
    for name in ("alpaca_random_9k.json", "dolly_3k.json"):
        base.extend(read_records(SHARED / name).records)
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, len(base), size=n)
    answers = rng.integers(0, len(base), size=n)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in range(n):
            p, a = base[int(prompts[i])], base[int(answers[i])]
            row = {
                "id": f"b{i}",
                "instruction": p.instruction,
                "input": p.input,
                "output": a.output,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def score_once(data: Path, out: Path, extra: list[str]) -> tuple[float, float, dict]:
    """(wall seconds, peak RSS in MiB, runs from the summary) of one `score` process."""
    cmd = [sys.executable, "-m", "instructmining.cli", "score", str(data), "-o", str(out)]
    cmd += ["--profile", "lite", "--no-cache", "-q", "--overwrite", *extra]
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"score failed on {data}:\n{err}")
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    return wall, usage.ru_maxrss / 1024, summary["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/imbench"))
    parser.add_argument("--engine", default="local", choices=["local", "ray"])
    parser.add_argument("--num-actors", type=int, default=2, help="Ray actors (--engine ray)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    extra = []
    if args.engine == "ray":
        extra = ["--engine", "ray", "--num-actors", str(args.num_actors)]
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}, engine {args.engine}")
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        data = args.work / f"pool_{n}.jsonl"
        if not data.exists():
            build_pool(data, n)
        wall, rss, runs = score_once(data, args.work / f"scores_{n}.jsonl", extra)
        parts = ", ".join(f"{k} {v['seconds']:.0f}" for k, v in runs.items())
        search = runs.get("knn6", {}).get("neighbours", {}) or {}
        rows.append((n, data.stat().st_size / 2**20, wall, rss, parts, search.get("text", "exact")))
        print(f"{n} records: {wall:.0f} s, peak {rss:.0f} MiB ({parts})", flush=True)
    print("\n| records | file MiB | wall s | peak RSS MiB | seconds per indicator | knn6 search |")
    print("|---:|---:|---:|---:|---|---|")
    for n, size, wall, rss, parts, search in rows:
        print(f"| {n:,} | {size:.0f} | {wall:.0f} | {rss:.0f} | {parts} | {search} |")


if __name__ == "__main__":
    main()
