"""Offline-profile scoring speed: records/s per indicator and in total, cold and with a warm cache.

Usage: python benchmarks/bench_scoring.py [DATA ...] [--repeat N]
(default data: ../shared/data/pools/dolly_3k.json and alpaca_random_9k.json).
Cold = a fresh cache file in a temporary folder (the process has already
imported its libraries once, so import time is reported separately); warm =
the same run again, every score served from the cache. Prints wall and CPU
seconds: on a loaded machine, CPU time is the steadier number. Measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = [
    REPO.parent / "shared" / "data" / "pools" / "dolly_3k.json",
    REPO.parent / "shared" / "data" / "pools" / "alpaca_random_9k.json",
]


def _timed(fn):  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="*", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=1, help="cold runs per file (best kept)")
    args = parser.parse_args()

    _, import_wall, import_cpu = _timed(_import_all)
    print(
        f"imports (sklearn, lexicalrichness, pandas): {import_wall:.2f} s wall, {import_cpu:.2f} s CPU"
    )
    print(
        f"cores: {os.cpu_count()}, load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    from instructmining.indicators.engine import score_records
    from instructmining.indicators.profiles import build
    from instructmining.readers import read_records

    for path in args.data:
        if not path.exists():
            print(f"{path}: missing, skipped")
            continue
        result, read_wall, _ = _timed(lambda p=path: read_records(p))
        records = result.records
        n = len(records)
        print(f"\n{path.name}: {n} records (read in {read_wall:.2f} s)")
        best = None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                cache = Path(tmp) / "cache.sqlite"
                cold, cw, cc = _timed(
                    lambda c=cache, r=records: score_records(r, build().indicators, cache=c)
                )
                warm, ww, wc = _timed(
                    lambda c=cache, r=records: score_records(r, build().indicators, cache=c)
                )
            if best is None or cw < best[1]:
                best = (cold, cw, cc, warm, ww, wc)
        assert best is not None
        cold, cw, cc, warm, ww, wc = best
        print(f"{'indicator':<14}{'cold s':>9}{'cold rec/s':>12}{'warm s':>9}{'warm rec/s':>12}")
        for name, run in cold.run_dicts().items():
            w = warm.run_dicts()[name]
            print(
                f"{name:<14}{run['seconds']:>9.2f}{n / max(run['seconds'], 1e-9):>12.0f}"
                f"{w['seconds']:>9.2f}{n / max(w['seconds'], 1e-9):>12.0f}"
            )
        print(
            f"{'total':<14}{cw:>9.2f}{n / cw:>12.0f}{ww:>9.2f}{n / ww:>12.0f}"
            f"   (CPU: cold {cc:.2f} s, warm {wc:.2f} s)"
        )


def _import_all() -> None:
    import lexicalrichness  # noqa: F401
    import pandas  # noqa: F401
    import sklearn.decomposition
    import sklearn.feature_extraction.text  # noqa: F401


if __name__ == "__main__":
    main()
