"""Fault injection: a study locked by another run, a half-built base, workers orphaned by
kill -9, outputs that cannot be written, corrupt stores and checkpoints, and the exit-code
rule (2: the command line or its input is wrong; 1: something it depends on failed)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from study_helpers import write_eval, write_sources

from instructmining.cli.app import main
from instructmining.errors import CorruptFileError, InstructMiningError, StudyLockedError
from instructmining.experiments import runner
from instructmining.experiments.lock import study_lock
from instructmining.experiments.store import ResultsStore
from instructmining.experiments.study import Study, create_study
from instructmining.experiments.tiny_base import DONE, TinyBaseConfig, finished
from instructmining.indicators.cache import ScoreCache

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "alpaca_style.jsonl"
SMALL: dict[str, Any] = {
    "max_length": 64,
    "epochs": 1,
    "batch_size": 8,
    "tiny": TinyBaseConfig(vocab_size=400, pretrain_examples=60),
}
LINUX = sys.platform.startswith("linux")


def _study(tmp_path: Path, n: int = 3, size: int = 12) -> Path:
    create_study(
        tmp_path / "study",
        sources=write_sources(tmp_path / "src"),
        eval_paths=write_eval(tmp_path / "eval"),
        n_mixtures=n,
        size=size,
        seed=0,
        indicators=["input_length", "output_length"],
    )
    return tmp_path / "study"


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    return _study(tmp_path)


def _invoke(*args: Any) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result: Result, code: int) -> str:
    """The single `Error: ...` line on stderr of a command that exited with `code`."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any indicator computed from here on fails the test: the refusal must come first."""
    import instructmining.indicators.engine as engine

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an indicator was computed before the refusal")

    monkeypatch.setattr(engine, "score", boom)


# --- the study lock ---------------------------------------------------------------------

HOLD = (
    "import sys, time\n"
    "from instructmining.experiments.lock import study_lock\n"
    "with study_lock(sys.argv[1], 'study run'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


@pytest.fixture
def holder(study_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the study's lock (as a running `study run` does)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(study_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_is_refused_while_another_holds_the_lock(
    study_dir: Path, holder: subprocess.Popen[str]
) -> None:
    line = _one_line(_invoke("study", "run", study_dir, "-q"), 1)
    assert str(study_dir) in line and f"pid {holder.pid}" in line and "study run" in line
    assert "wait for it to finish or stop it" in line
    assert not (study_dir / "base").exists() and not (study_dir / "results.sqlite").exists()
    with pytest.raises(StudyLockedError):
        runner.run_study(study_dir, runner.settings_for("tiny", **SMALL))
    # the other writers are refused too; reading needs no lock
    assert f"pid {holder.pid}" in _one_line(_invoke("study", "fit", study_dir), 1)
    src = study_dir.parent / "src" / "alpaca.json"
    evals = study_dir.parent / "eval" / "self_instruct.jsonl"
    plan = ["study", "plan", "--source", f"a={src}", "--eval", evals, "-o", study_dir]
    assert "locked by" in _one_line(_invoke(*plan, "--overwrite"), 1)
    assert _invoke("study", "status", study_dir).exit_code == 0
    # kill -9 leaves no stale lock
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with study_lock(study_dir, "test"):
        pass


def test_the_lock_is_reentrant_in_one_thread_and_refuses_another(tmp_path: Path) -> None:
    refused: list[BaseException] = []

    def other() -> None:
        try:
            with study_lock(tmp_path, "study fit"):
                pass
        except StudyLockedError as exc:
            refused.append(exc)

    with study_lock(tmp_path, "study run"), study_lock(tmp_path, "study run"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(refused) == 1 and f"pid {os.getpid()}" in str(refused[0])
    with study_lock(tmp_path, "study fit"):  # released by the outer block
        pass


def test_a_base_folder_without_its_marker_is_rebuilt(study_dir: Path) -> None:
    base = study_dir / "base" / "tiny"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")  # what a killed (or concurrent) build left
    leftover = study_dir / "base" / ".tiny.partial-killed"
    leftover.mkdir()
    settings = runner.settings_for("tiny", **SMALL)
    assert Path(runner.prepare_base(Study(study_dir), settings)) == base
    assert (base / DONE).is_file() and (base / "tokenizer.json").is_file()
    assert json.loads((base / "config.json").read_text())["model_type"] == "gpt2"
    assert not leftover.exists()
    stamp = (base / DONE).stat().st_mtime_ns
    runner.prepare_base(Study(study_dir), settings)  # finished: used as it is
    assert (base / DONE).stat().st_mtime_ns == stamp
    # a seed rerun pretrains its own base beside the first one (no error, no mixing)
    other = Path(
        runner.prepare_base(Study(study_dir), runner.settings_for("tiny", **SMALL, seed=1))
    )
    assert other.parent == base.parent and other.name.startswith("tiny-")
    assert (other / DONE).is_file() and (base / DONE).stat().st_mtime_ns == stamp
    (base / DONE).write_text('{"config": ')  # a marker cut short is no marker
    assert finished(base) is None


# --- workers die with their parent ------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _workers(parent: int) -> list[int]:
    """Children of `parent` started by multiprocessing's spawn (the pool's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[1] != parent:
            continue
        with contextlib.suppress(OSError):
            if b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    study = _study(tmp_path, n=4, size=30)
    cmd = [sys.executable, "-m", "instructmining.cli", "study", "run", str(study)]
    cmd += ["--workers", "2", "--max-length", "64", "--epochs", "500", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 300
        while len(workers) < 2 and time.time() < deadline:
            assert proc.poll() is None, "the run ended before its workers started"
            workers = _workers(proc.pid)
            time.sleep(0.2)
        assert len(workers) == 2
        time.sleep(2)  # let them get into their work
        assert all(_alive(w) for w in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert [w for w in workers if _alive(w)] == []
    finally:
        for w in workers:  # never leave an orphan behind, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- one line instead of a traceback ----------------------------------------------------


@pytest.fixture(params=["proc", "sys", "read-only"])
def unwritable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A folder no file can be created in."""
    if request.param in ("proc", "sys"):
        if not LINUX:
            pytest.skip("Linux pseudo file systems")
        yield Path(f"/{request.param}")
        return
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders (/proc and /sys stand in for them)")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("command", ["score", "select", "fit", "generate"])
def test_an_unwritable_output_is_refused_before_any_work(
    command: str, unwritable: Path, tmp_path: Path, no_scoring: None
) -> None:
    out = unwritable / "instructmining-out"
    args: dict[str, list[Any]] = {
        "score": ["score", EXAMPLE, "-o", out.with_suffix(".jsonl")],
        "select": ["select", EXAMPLE, "--strategy", "random", "-k", "2", "-o", f"{out}.jsonl"],
        "fit": ["fit", tmp_path / "missing.csv", "-o", out.with_suffix(".json")],
        "generate": [
            "generate",
            "--seeds",
            tmp_path / "none.jsonl",
            "--llm",
            "openai:m",
            "-o",
            out,
        ],
    }
    line = _one_line(_invoke(*args[command]), 1)
    assert f"cannot write in {unwritable}" in line and "choose an output in a folder" in line


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"this is not an SQLite database\n" * 200)
    return path


@pytest.mark.parametrize("command", ["status", "run", "fit"])
def test_a_corrupt_results_store_is_named_with_the_fix(command: str, study_dir: Path) -> None:
    store = _corrupt(study_dir / "results.sqlite")
    line = _one_line(_invoke("study", command, study_dir), 1)
    assert f"{store}: the results store is corrupt" in line and "delete it" in line
    assert not (study_dir / "base").exists()  # `run` stopped before building the base


def test_a_corrupt_score_cache_is_named_with_the_fix(tmp_path: Path, study_dir: Path) -> None:
    cache = _corrupt(tmp_path / "cache.sqlite")
    out = tmp_path / "s.jsonl"
    line = _one_line(_invoke("score", EXAMPLE, "-o", out, "--cache", cache), 1)
    assert f"{cache}: the score cache is corrupt" in line and "--no-cache" in line
    assert not out.exists()
    assert _invoke("score", EXAMPLE, "-o", out, "--no-cache").exit_code == 0
    # the study's cache: refused before the base is built
    _corrupt(study_dir / "scores.sqlite")
    line = _one_line(_invoke("study", "run", study_dir, "-q"), 1)
    assert "scores.sqlite: the score cache is corrupt" in line
    assert not (study_dir / "base").exists()


def test_damaged_pages_of_a_score_cache_are_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with ScoreCache(path) as cache:
        cache.put("k", [f"r{i}" for i in range(3000)], [float(i) for i in range(3000)])
    with sqlite3.connect(path) as con:
        page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(path, "r+b") as fh:  # overwrite every page after the first with noise
        fh.seek(page)
        fh.write(os.urandom(path.stat().st_size - page))
    with pytest.raises(CorruptFileError, match=r"score cache is corrupt.*--no-cache"):
        ScoreCache(path).get("k", ["r1", "r2"])


def _damaged_checkpoints(tmp_path: Path, tiny_causal_lm: Path) -> dict[str, tuple[Path, str]]:
    """Checkpoint folders that cannot load, with what the refusal says about each."""
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_json = tmp_path / "bad-json"
    shutil.copytree(tiny_causal_lm, bad_json)
    (bad_json / "config.json").write_text('{"model_type": "gpt2",')
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_causal_lm, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_causal_lm, no_weights)
    (no_weights / "model.safetensors").unlink()
    return {
        "empty": (empty, "is an empty folder"),
        "bad-json": (bad_json, "config.json, which is not valid JSON"),
        "truncated": (truncated, "model.safetensors, which is truncated"),
        "no-weights": (no_weights, "holds no weights file"),
        "missing": (tmp_path / "nowhere", "does not exist"),
    }


def test_damaged_checkpoints_are_refused_before_any_indicator(
    tmp_path: Path, tiny_causal_lm: Path, study_dir: Path, no_scoring: None
) -> None:
    out = tmp_path / "s.jsonl"
    for name, (folder, says) in _damaged_checkpoints(tmp_path, tiny_causal_lm).items():
        # a good checkpoint first: every one is checked before any is used
        score = ["score", EXAMPLE, "-o", out, "-i", "output_length,perplexity,ifd"]
        score += ["--model", f"ifd={tiny_causal_lm}", "--model", f"perplexity={folder}"]
        line = _one_line(_invoke(*score), 2)
        assert f"--model perplexity={folder}" in line and says in line, name
        select = ["select", EXAMPLE, "--strategy", "random", "-k", "2", "-o", out]
        assert says in _one_line(_invoke(*select, "--model", f"perplexity={folder}"), 2), name
        run = ["study", "run", study_dir, "--base-model", folder]
        assert says in _one_line(_invoke(*run), 2), name
    assert not out.exists() and not (study_dir / "results.sqlite").exists()
    # a sound checkpoint passes the check
    from instructmining.cli.options import check_checkpoint

    check_checkpoint(str(tiny_causal_lm), "--model perplexity")


def _without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "ray" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_engine_ray_without_ray_names_the_install_line_at_once(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_ray(monkeypatch)
    start = time.perf_counter()
    line = _one_line(_invoke("study", "run", study_dir, "--engine", "ray"), 1)
    assert "pip install 'instructmining[ray]'" in line
    assert time.perf_counter() - start < 5 and not (study_dir / "base").exists()


# --- exit codes -------------------------------------------------------------------------


@contextlib.contextmanager
def _locked_elsewhere(folder: Path) -> Iterator[None]:
    """The study's lock held by another thread (as by another `study run`)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with study_lock(folder, "study run"):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join()


def _rule(tmp_path: Path, indicators: dict[str, Any]) -> Path:
    doc = {
        "kind": "instructmining.rule",
        "schema_version": 1,
        "name": "r",
        "intercept": 0.5,
        "coefficients": {name: -0.01 for name in indicators},
        "indicators": indicators,
    }
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(doc))
    return path


Case = Callable[[Path, contextlib.ExitStack, pytest.MonkeyPatch], list[Any]]


def _bad_data(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    (tmp / "bad.jsonl").write_text('{"instruction": "x", "output": "y"}\n{"instruction": \n')
    return ["score", tmp / "bad.jsonl", "-o", tmp / "s.jsonl"]


def _output_exists(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    (tmp / "s.jsonl").write_text("x\n")
    return ["score", EXAMPLE, "-o", tmp / "s.jsonl"]


def _bad_rule(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    return ["select", EXAMPLE, "--rule", _rule(tmp, {"knn6": {"name": "knn6", "k": -3}}), "-k", 2]


def _nan_threshold(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    rule = _rule(tmp, {"output_length": {"name": "output_length"}})
    return ["select", EXAMPLE, "--rule", rule, "--max-predicted-loss", "nan"]


def _bad_manifest(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    study = _study(tmp)
    (study / "study.json").write_text('{"format": 1,')
    return ["study", "run", study]


def _manifest_without_indicators(
    tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch
) -> list[Any]:
    study = _study(tmp)
    doc = json.loads((study / "study.json").read_text())
    del doc["indicators"]
    (study / "study.json").write_text(json.dumps(doc))
    return ["study", "fit", study]


def _unknown_config(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    study = _study(tmp)
    cid = Study(study).candidates[0]["candidate_id"]
    ResultsStore(study / "results.sqlite", "abc").record_done(cid, {"eval_loss": 2.0})
    return ["study", "fit", study, "--config", "nope"]


def _missing_ckpt(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    return ["score", EXAMPLE, "-i", "perplexity", "--model", f"perplexity={tmp / 'nowhere'}"]


def _no_ray(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    _without_ray(mp)
    return ["study", "run", _study(tmp), "--engine", "ray"]


def _corrupt_store(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    study = _study(tmp)
    _corrupt(study / "results.sqlite")
    return ["study", "status", study]


def _unwritable(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    return ["score", EXAMPLE, "-o", "/proc/instructmining-s.jsonl"]


def _no_model(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    mp.setenv("HF_HUB_OFFLINE", "1")
    return ["score", EXAMPLE, "-i", "perplexity", "--model", "perplexity=no-org/not-cached"]


def _locked(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> list[Any]:
    study = _study(tmp)
    stack.enter_context(_locked_elsewhere(study))
    return ["study", "run", study]


CASES: list[tuple[str, Case, int, str]] = [
    ("malformed data", _bad_data, 2, "bad.jsonl, line 2"),
    ("output exists", _output_exists, 2, "--overwrite"),
    ("invalid rule settings", _bad_rule, 2, "'k'"),
    ("NaN threshold", _nan_threshold, 2, "--max-predicted-loss"),
    ("invalid manifest", _bad_manifest, 2, "study.json: not valid JSON"),
    ("incomplete manifest", _manifest_without_indicators, 2, "no 'indicators' list"),
    ("unknown configuration", _unknown_config, 2, "'nope'"),
    ("missing checkpoint path", _missing_ckpt, 2, "does not exist"),
    ("missing optional package", _no_ray, 1, "instructmining[ray]"),
    ("corrupt results store", _corrupt_store, 1, "results store is corrupt"),
    ("unwritable output", _unwritable, 1, "cannot write in /proc"),
    ("model unavailable", _no_model, 1, "HF_HUB_OFFLINE"),
    ("study locked", _locked, 1, "locked by"),
]


@pytest.mark.parametrize(
    ("setup", "code", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_exit_codes_follow_the_rule(
    setup: Case, code: int, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if setup in (_unwritable,) and not LINUX:
        pytest.skip("/proc")
    with contextlib.ExitStack() as stack:
        args = setup(tmp_path, stack, monkeypatch)
        if "-o" not in args and args[0] in ("score", "select"):
            args += ["-o", tmp_path / "out.jsonl"]
        assert says in _one_line(_invoke(*args), code)


def test_device_and_dtype_a_machine_cannot_serve_are_input_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from instructmining.models.loading import resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for call, says in [
        (lambda: resolve_device("cuda"), "--device cuda: no CUDA GPU"),
        (lambda: resolve_device("tpu"), "--device must be"),
        (lambda: resolve_dtype("fp16", "cpu"), "fp16 needs a GPU"),
        (lambda: resolve_dtype("fp8", "cpu"), "dtype must be"),
    ]:
        with pytest.raises(InstructMiningError, match=says) as info:
            call()
        assert info.value.exit_code == 2


def test_command_line_checkpoint_check_reads_model_schemes(tmp_path: Path) -> None:
    from instructmining.cli.options import check_checkpoint

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    check_checkpoint(f"gguf:{gguf}", "--model perplexity")  # a file: left to the loader
    check_checkpoint("tfidf-svd", "--model knn6")
    check_checkpoint("st:sentence-transformers/all-MiniLM-L6-v2", "--model knn6")  # hub id
    with pytest.raises(InstructMiningError, match=r"GGUF file .* does not exist") as info:
        check_checkpoint(f"gguf:{tmp_path / 'none.gguf'}", "--model perplexity")
    assert info.value.exit_code == 2
    with pytest.raises(InstructMiningError, match=r"checkpoint path '/nowhere/m' does not exist"):
        check_checkpoint("st:/nowhere/m", "--model knn6")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InstructMiningError, match="empty folder"):
        check_checkpoint(f"hf:{empty}", "--model perplexity")
