"""`score --engine ray`: the same output as the local engine, and a killed run resumes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from instructmining.cli import main  # noqa: E402
from instructmining.indicators.cache import ScoreCache  # noqa: E402

pytestmark = pytest.mark.slow  # a local Ray and its actors take tens of seconds here

WORDS = ["sun", "moon", "river", "stone", "bread", "light", "paper", "cloud", "garden", "ocean"]


def _write_pool(path: Path, n: int) -> None:
    rng = np.random.default_rng(3)
    with open(path, "w") as fh:
        for i in range(n):
            row = {
                "id": f"r{i}",
                "instruction": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 8)))),
                "output": " ".join(rng.choice(WORDS, size=int(rng.integers(2, 40)))),
            }
            fh.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_and_local_engines_write_identical_scores(local_ray, tmp_path):
    data = tmp_path / "pool.jsonl"
    _write_pool(data, 3000)
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        args = ["score", str(data), "-o", str(out), "--profile", "lite", "--no-cache", "-q"]
        result = CliRunner().invoke(main, [*args, "--engine", engine, "--num-actors", "2"])
        assert result.exit_code == 0, result.output
        outs[engine] = out.read_bytes()
    assert outs["ray"] == outs["local"]


DRIVER = """
import sys, time
import numpy as np
import ray
from instructmining.indicators.base import Indicator
from instructmining.indicators.engine import score_file
from instructmining.indicators.ray_executor import RayExecutor


class Slow(Indicator):
    name = "slow"
    description = "output characters, slowly"

    def score(self, records):
        time.sleep(1.0)
        return np.array([len(r.output) for r in records], float)


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=sys.argv[4])
with RayExecutor(num_actors=2) as ex:
    score_file(sys.argv[1], sys.argv[2], indicators=[Slow()], cache=sys.argv[3], executor=ex,
               overwrite=True, chunk_size=50)
print("finished")
"""


def _kill_session(temp_dir: str) -> None:
    """Kill every process of the Ray instance that kept its files in `temp_dir`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


def test_a_killed_ray_run_resumes_without_recomputing(tmp_path):
    data = tmp_path / "pool.jsonl"
    _write_pool(data, 600)
    cache = tmp_path / "c.sqlite"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    temp_dir = tempfile.mkdtemp(prefix="imr", dir="/tmp")  # short: Ray's socket paths
    cmd = [sys.executable, str(script), str(data), str(tmp_path / "s.jsonl"), str(cache), temp_dir]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 240
        stored = 0
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1)
            if cache.exists():
                with ScoreCache(cache) as store:
                    stored = store.count()
                if stored >= 100:  # two of the twelve chunks committed
                    break
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_session(temp_dir)
    with ScoreCache(cache) as store:
        stored = store.count()
    assert 0 < stored < 600
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    finally:
        _kill_session(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert done.returncode == 0 and "finished" in done.stdout, done.stdout + done.stderr
    summary = json.loads((tmp_path / "s.jsonl.summary.json").read_text())
    assert summary["runs"]["slow"]["cached"] == stored
    assert summary["runs"]["slow"]["computed"] == 600 - stored
    scores = [json.loads(line)["slow"] for line in (tmp_path / "s.jsonl").open()]
    expected = [len(json.loads(line)["output"]) for line in data.open()]
    assert scores == expected
