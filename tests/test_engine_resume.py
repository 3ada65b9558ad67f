"""A scoring run killed with SIGKILL resumes where it stopped and ends with identical output."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from instructmining.indicators.cache import ScoreCache
from instructmining.indicators.engine import cache_key, record_keys, score, score_records
from instructmining.readers import read_records

SLOW_MODULE = '''
import time

import numpy as np
import pytest

from instructmining.indicators.base import Indicator


class Slow(Indicator):
    """A record-level indicator that takes its time, so that a kill lands mid-run."""

    name = "slow"
    description = "output characters plus half the instruction's, slowly"

    def __init__(self, *, delay: float = 0.15) -> None:
        self.delay = delay

    def score(self, records):
        time.sleep(self.delay)
        return np.array([len(r.output) + 0.5 * len(r.instruction) for r in records], float)
'''

RUN = """
import sys
sys.path.insert(0, {here!r})
from slowind import Slow
from instructmining.indicators.engine import score
from instructmining.readers import read_records
records = read_records({data!r}).records
score(records, ["mtld", Slow(), "knn6", "perplexity"], cache={cache!r}, chunk_size=10)
print("finished")
"""

WORDS = [
    "sun",
    "moon",
    "river",
    "stone",
    "bread",
    "light",
    "paper",
    "cloud",
    "garden",
    "ocean",
    "music",
    "silver",
]


def _write_data(path, n=120):
    rng = np.random.default_rng(7)
    with open(path, "w") as fh:
        for i in range(n):
            out = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 30))))
            fh.write(json.dumps({"instruction": f"Write line {i}", "output": out}) + "\n")


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    (tmp_path / "slowind.py").write_text(SLOW_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        from slowind import Slow  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    data, cache = tmp_path / "d.jsonl", tmp_path / "c.sqlite"
    _write_data(data)
    records = read_records(data).records
    slow_key = cache_key(Slow(), record_keys(records))

    script = RUN.format(here=str(tmp_path), data=str(data), cache=str(cache))
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        done = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if cache.exists():
                done = ScoreCache(cache).count(slow_key)
                if done >= 30:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    store = ScoreCache(cache)
    stored = store.count(slow_key)
    store.close()
    assert 30 <= stored < len(records) and stored % 10 == 0  # whole committed chunks only

    slow = Slow(delay=0.15)
    table = score_records(records, ["mtld", slow, "knn6", "perplexity"], cache=cache, chunk_size=10)
    resumed = table.frame()
    runs = table.run_dicts()
    assert runs["mtld"] == {**runs["mtld"], "computed": 0, "cached": len(records)}
    assert runs["slow"]["cached"] == stored
    assert runs["slow"]["computed"] == len(records) - stored
    assert runs["knn6"]["computed"] == len(records)  # never reached before the kill

    fresh = score(records, ["mtld", Slow(delay=0.0), "knn6", "perplexity"], chunk_size=10)
    pd.testing.assert_frame_equal(resumed, fresh, check_exact=True)
    # a third run computes nothing
    again = score_records(
        records, ["mtld", Slow(), "knn6", "perplexity"], cache=cache, chunk_size=10
    )
    assert all(r.computed == 0 for r in again.runs.values())
    pd.testing.assert_frame_equal(again.frame(), fresh, check_exact=True)


@pytest.mark.slow
def test_command_killed_then_rerun_writes_the_uninterrupted_output(shared_data, tmp_path):
    data = shared_data / "pools" / "dolly_3k.json"
    cache = tmp_path / "c.sqlite"
    command = [sys.executable, "-m", "instructmining.cli", "score", str(data), "-q"]
    full = subprocess.run(
        [*command, "-o", str(tmp_path / "full.parquet"), "--no-cache"], capture_output=True
    )
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([*command, "-o", str(tmp_path / "s.parquet"), "--cache", str(cache)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if cache.exists() and ScoreCache(cache).count() > 0:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the command ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "s.parquet").exists()
    rerun = subprocess.run(
        [*command, "-o", str(tmp_path / "s.parquet"), "--cache", str(cache)],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    line = next(x for x in rerun.stdout.splitlines() if x.startswith(f"cache {cache}"))
    reused = int(line.split(": ", 1)[1].split(" scores reused")[0])
    assert reused > 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "s.parquet"),
        pd.read_parquet(tmp_path / "full.parquet"),
        check_exact=True,
    )
