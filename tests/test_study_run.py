"""Running the study: eval loss, training, the results store, resume, failures, status."""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from study_helpers import write_eval, write_sources

from instructmining.cli.app import main
from instructmining.experiments import runner
from instructmining.experiments.evaluate import eval_loss
from instructmining.experiments.finetune import (
    TrainConfig,
    finetune,
    length_batches,
    load_tokenizer,
)
from instructmining.experiments.store import ResultsStore
from instructmining.experiments.study import Study, create_study
from instructmining.experiments.template import IGNORE, encode_example, format_prompt
from instructmining.experiments.tiny_base import TinyBaseConfig
from instructmining.records import make_record


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny models train fastest on one thread, and the tests share the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


RECORDS = [
    make_record("Add 2 and 3.", "", "The sum is 5."),
    make_record("Name a colour.", "Something warm", "Red is a warm colour, like fire and sunsets."),
    make_record("Say hello.", "", "Hello!"),
    make_record("List three animals.", "", "Cat, dog and a very large horse in a field."),
    make_record("Repeat the word.", "blue", "blue"),
]
SMALL: dict[str, Any] = {
    "max_length": 64,
    "epochs": 1,
    "batch_size": 8,
    "tiny": TinyBaseConfig(vocab_size=400, pretrain_examples=60),
}


class Killed(BaseException):
    """Stands in for the process being stopped mid-run (not an Exception: never caught)."""


def _independent_loss(path: Path, records: list[Any]) -> float:
    """Token-weighted response NLL with plain transformers calls, one example at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in records:
            prompt = tok(format_prompt(r), add_special_tokens=False)["input_ids"]
            response = [*tok(r.output, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            ids = torch.tensor([prompt + response])
            logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            for k, token in enumerate(response):
                total -= float(logp[len(prompt) + k - 1, token])
                count += 1
    return total / count


def test_eval_loss_equals_an_independent_computation(tiny_causal_lm: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    tok = load_tokenizer(str(tiny_causal_lm))
    result = eval_loss(model, tok, RECORDS, max_length=128, batch_size=2)  # padded batches
    assert result.loss == pytest.approx(_independent_loss(tiny_causal_lm, RECORDS), rel=1e-5)
    assert result.examples == 5 and result.tokens > 5
    one = eval_loss(model, tok, RECORDS, max_length=128, batch_size=1)
    assert one.loss == pytest.approx(result.loss, rel=1e-5)


def test_template_masks_the_prompt_and_ends_with_eos(tiny_causal_lm: Path) -> None:
    tok = load_tokenizer(str(tiny_causal_lm))
    ids, labels = encode_example(tok, RECORDS[1], 512)
    prompt = tok(format_prompt(RECORDS[1]), add_special_tokens=False)["input_ids"]
    assert labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert labels[len(prompt) :] == ids[len(prompt) :]
    assert ids[-1] == tok.eos_token_id
    assert "### Input:" in format_prompt(RECORDS[1]) and "### Input:" not in format_prompt(
        RECORDS[0]
    )
    ids, labels = encode_example(tok, RECORDS[3], 10)  # truncated: prompt keeps at most half
    assert len(ids) == 10 and labels.count(IGNORE) <= 5 and labels[-1] != IGNORE


def test_length_batches_cover_every_index_once() -> None:
    import numpy as np

    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = length_batches(lengths, 3, np.random.default_rng(0))
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 4 for b in batches)


def test_finetuning_lowers_the_loss_and_is_deterministic(tiny_causal_lm: Path) -> None:
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=2, max_length=64, seed=1)
    base = str(tiny_causal_lm)
    tok = load_tokenizer(base)
    from transformers import AutoModelForCausalLM

    before = eval_loss(AutoModelForCausalLM.from_pretrained(base), tok, RECORDS, max_length=64)
    model, _, stats = finetune(base, RECORDS, cfg, tokenizer=tok)
    after = eval_loss(model, tok, RECORDS, max_length=64)
    assert after.loss < before.loss
    assert stats.steps == 4 * 3 and stats.tokens > 0 and stats.target_tokens < stats.tokens
    model2, _, _ = finetune(base, RECORDS, cfg, tokenizer=tok)
    assert eval_loss(model2, tok, RECORDS, max_length=64).loss == after.loss
    # responses cut at max_length are counted: the run row says what was trained on
    assert stats.responses_cut == 0
    long = [make_record("Say it.", "", " ".join(["word"] * 80)), *RECORDS]  # 80 > 64 tokens
    _, _, cut = finetune(base, long, replace(cfg, epochs=1), tokenizer=tok)
    assert cut.responses_cut == 1


def test_training_projects_only_response_positions_with_the_models_own_loss(
    tiny_causal_lm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loss is the model's own (mean NLL over response tokens), with the same
    gradients, whether or not only the response positions are projected."""
    import torch
    from transformers import AutoModelForCausalLM

    from instructmining.experiments import finetune as finetune_module
    from instructmining.experiments.finetune import collate
    from instructmining.experiments.template import encode_all
    from instructmining.models.causal import position_logits, split_head

    base, tok = str(tiny_causal_lm), load_tokenizer(str(tiny_causal_lm))
    cfg = TrainConfig(epochs=2, lr=3e-3, batch_size=8, max_length=64, seed=3)
    _, _, stats = finetune(base, RECORDS, cfg, tokenizer=tok)
    plain = AutoModelForCausalLM.from_pretrained(base)
    assert split_head(plain) is not None  # GPT-2: the shortcut is taken
    examples = encode_all(tok, RECORDS, 64)
    batch = length_batches([len(x) for x, _ in examples], 8, None)[0]  # training's row order
    ids, mask, labels = collate([examples[i] for i in batch], tok.pad_token_id, "cpu")
    plain.train()  # dropout as in training, with the same seed and rows
    torch.manual_seed(cfg.seed)
    with torch.no_grad():  # one batch holds all five records: the first step's loss
        own = plain(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert stats.first_loss == pytest.approx(float(own), rel=1e-5)
    assert stats.target_tokens == int((labels[:, 1:] != IGNORE).sum()) * 2
    plain.eval()  # the gradients of the two losses agree (no dropout to draw)
    grads = []
    for shortcut in (False, True):
        plain.zero_grad()
        if shortcut:
            shifted = labels[:, 1:]
            rows, cols = (shifted != IGNORE).nonzero(as_tuple=True)
            logits = position_logits(plain, split_head(plain), ids, mask, rows, cols)
            torch.nn.functional.cross_entropy(logits, shifted[rows, cols]).backward()
        else:
            plain(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append([p.grad.clone() for p in plain.parameters()])
    for (name, _), a, b in zip(plain.named_parameters(), *grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7, msg=name)
    monkeypatch.setattr(finetune_module, "split_head", lambda model: None)
    _, _, full_stats = finetune(base, RECORDS, cfg, tokenizer=tok)  # the full-logits path
    assert full_stats.last_loss == pytest.approx(stats.last_loss, rel=1e-4)


def test_lora_trains_only_adapters(tiny_causal_lm: Path) -> None:
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=4, max_length=64, lora=True, lora_r=2)
    model, _, stats = finetune(str(tiny_causal_lm), RECORDS, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    from instructmining.models.causal import split_head

    assert split_head(model) is not None  # the LoRA wrapper is looked through
    assert stats.steps == 2
    assert TrainConfig(lora=True).key() != TrainConfig().key()


def test_store_keeps_outcomes_and_counts_attempts(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    assert store.entries() == {}
    store.record_failed("a", "boom", 1.0)
    store.record_done(
        "a", {"candidate_id": "a", "eval_loss": 2.5, "wall_s": 3.0, "x": float("nan")}
    )
    store.record_done("b", {"candidate_id": "b", "eval_loss": 2.0, "wall_s": 1.0})
    entries = store.entries()
    assert entries["a"].status == "done" and entries["a"].attempts == 2
    assert entries["a"].row == {"candidate_id": "a", "eval_loss": 2.5, "wall_s": 3.0, "x": None}
    table = store.table()
    assert list(table["candidate_id"]) == ["a", "b"]


def test_store_never_shows_a_row_whose_transaction_was_killed(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultsStore(path).record_done("kept", {"eval_loss": 1.0})
    code = (
        "import os, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('BEGIN IMMEDIATE')\n"
        "con.execute(\"INSERT INTO runs VALUES ('torn', 'done', '{}', NULL, 1.0, 0, 1)\")\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], check=False)
    assert proc.returncode != 0
    assert set(ResultsStore(path).entries()) == {"kept"}
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    sources = write_sources(tmp_path / "src")
    evals = write_eval(tmp_path / "eval")
    create_study(
        tmp_path / "study",
        sources=sources,
        eval_paths=evals,
        n_mixtures=3,
        size=12,
        seed=0,
        indicators=["input_length", "output_length"],
    )
    return tmp_path / "study"


def test_run_records_a_row_per_candidate(study_dir: Path) -> None:
    summary = runner.run_study(study_dir, runner.settings_for("tiny", **SMALL))
    assert len(summary.done) == 3 and not summary.failed
    table = ResultsStore(study_dir / "results.sqlite").table()
    study = Study(study_dir)
    assert sorted(table["candidate_id"]) == sorted(c["candidate_id"] for c in study.candidates)
    for col in (
        "input_length",
        "output_length",
        "eval_loss",
        "base_model",
        "config_hash",
        "seed",
        "wall_s",
        "tokens_seen",
        "train_tokens_per_s",
        "eval_tokens_per_s",
    ):
        assert col in table.columns, col
    assert (table["eval_loss"] > 0).all() and (table["tokens_seen"] > 0).all()
    shares = table["proportion_alpaca"] + table["proportion_dolly"]
    assert shares.to_numpy() == pytest.approx(1.0)
    cid = table["candidate_id"][0]
    means = study.candidate_records(cid)
    expected = sum(len(r.output.split()) for r in means) / len(means)
    assert table.set_index("candidate_id").loc[cid, "output_length"] == pytest.approx(expected)
    assert (study_dir / "base" / "tiny" / "tokenizer.json").exists()
    # nothing left: a second run does nothing
    assert runner.run_study(study_dir, runner.settings_for("tiny", **SMALL)).done == []


def test_interrupted_run_resumes_without_rerunning(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner.train_and_evaluate
    calls: list[int] = []
    armed = [True]

    def interrupted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(len(args[1]))
        if armed[0] and len(calls) == 2:
            raise Killed  # the user (or the machine) stops the study here
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_and_evaluate", interrupted)
    with pytest.raises(Killed):
        runner.run_study(study_dir, runner.settings_for("tiny", **SMALL))
    store = ResultsStore(study_dir / "results.sqlite")
    first = store.entries()
    assert len(first) == 1
    calls.clear()
    armed[0] = False
    summary = runner.run_study(study_dir, runner.settings_for("tiny", **SMALL))
    assert len(calls) == 2 and len(summary.done) == 2 and summary.skipped == 1
    after = store.entries()
    (done_before,) = first.values()
    assert after[done_before.candidate_id] == done_before  # untouched
    forced = runner.run_study(study_dir, runner.settings_for("tiny", **SMALL), force=True, limit=1)
    assert len(forced.done) == 1


def test_a_failed_candidate_is_recorded_and_the_study_goes_on(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner.train_and_evaluate
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_and_evaluate", flaky)
    summary = runner.run_study(study_dir, runner.settings_for("tiny", **SMALL))
    assert len(summary.failed) == 1 and len(summary.done) == 2
    entries = ResultsStore(study_dir / "results.sqlite").entries()
    failed = entries[summary.failed[0]]
    assert failed.status == "failed" and "RuntimeError: CUDA out of memory" in failed.error
    # a plain rerun skips it; --retry-failed runs it again
    assert runner.run_study(study_dir, runner.settings_for("tiny", **SMALL)).done == []
    retried = runner.run_study(study_dir, runner.settings_for("tiny", **SMALL), retry_failed=True)
    assert retried.done == summary.failed
    assert ResultsStore(study_dir / "results.sqlite").entries()[summary.failed[0]].attempts == 2


def test_a_damaged_candidate_is_recorded_and_the_rest_run(study_dir: Path) -> None:
    import json

    study = Study(study_dir)
    broken = study.candidates[1]["candidate_id"]
    (study_dir / "candidates" / f"{broken}.json").write_text(json.dumps(["no-such-record"]))
    summary = runner.run_study(study_dir, runner.settings_for("tiny", **SMALL))
    assert summary.failed == [broken] and len(summary.done) == 2
    entry = ResultsStore(study_dir / "results.sqlite").entries()[broken]
    assert "not in pool.jsonl" in (entry.error or "")


def test_a_missing_base_model_stops_before_any_candidate(study_dir: Path) -> None:
    from instructmining.errors import InstructMiningError

    settings = runner.settings_for(str(study_dir / "no-such-model"))
    with pytest.raises(InstructMiningError, match="does not exist"):
        runner.run_study(study_dir, settings)
    assert ResultsStore(study_dir / "results.sqlite").entries() == {}


def test_study_run_and_status_commands(study_dir: Path) -> None:
    cli = CliRunner()
    args = [
        "study",
        "run",
        str(study_dir),
        "--base-model",
        "tiny",
        "--max-length",
        "64",
        "--epochs",
        "1",
        "--limit",
        "2",
        "-q",
    ]
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 done, 0 failed" in result.output
    status = cli.invoke(main, ["study", "status", str(study_dir), "-v"])
    assert status.exit_code == 0, status.output
    assert "done     2" in status.output and "pending  1" in status.output
    assert "eval_loss" in status.output
    walls = sorted(e.wall_s for e in ResultsStore(Study(study_dir).results_path).entries().values())
    eta = statistics.median(walls) / 3600  # one pending candidate at the median wall time
    assert f"pending  1  (about {eta:.1f} h one at a time, at the median" in status.output
    unknown = cli.invoke(main, ["study", "status", str(study_dir), "--config", "nope"])
    assert unknown.exit_code == 2 and "--config nope: no results for it" in unknown.output
    missing = cli.invoke(main, ["study", "status", str(study_dir.parent)])
    assert missing.exit_code == 2 and "not a study folder" in missing.output
    assert "scoring indicators" not in result.output  # -q: no phase lines


def test_study_run_logs_phases_without_a_terminal(study_dir: Path) -> None:
    args = ["study", "run", str(study_dir), "--base-model", "tiny", "--max-length", "64"]
    result = CliRunner().invoke(main, [*args, "--limit", "1"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ": " in ln and ln[:2].isdigit()]
    phases = [ln.split(": ", 1)[1].split(" ")[0] for ln in lines]
    assert phases[:3] == ["scoring", "training", "trained"], lines
    assert "evaluating on" in lines[2]


@pytest.mark.slow
def test_kill_9_then_resume(study_dir: Path) -> None:
    import os
    import signal
    import time

    cmd = [
        sys.executable,
        "-m",
        "instructmining.cli",
        "study",
        "run",
        str(study_dir),
        "--max-length",
        "64",
        "--epochs",
        "1",
        "-q",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = ResultsStore(study_dir / "results.sqlite")
    deadline = time.time() + 300
    while time.time() < deadline and not store.entries():
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = store.entries()
    assert 1 <= len(before) <= 3
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    after = store.entries()
    assert len(after) == 3 and all(e.status == "done" for e in after.values())
    for cid, entry in before.items():
        assert after[cid] == entry  # finished before the kill: never rerun


def test_keep_weights_saves_the_finetuned_model(study_dir: Path) -> None:
    settings = runner.settings_for("tiny", keep_weights=True, **SMALL)
    summary = runner.run_study(study_dir, settings, limit=1)
    (cid,) = summary.done
    saved = study_dir / "runs" / cid
    assert (saved / "config.json").exists() and (saved / "tokenizer.json").exists()
    runner.run_study(study_dir, runner.settings_for("tiny", **SMALL), limit=1)
    assert sorted(p.name for p in (study_dir / "runs").iterdir()) == [cid]  # not kept by default


def test_baseline_is_recorded_once_per_configuration_and_shown_by_status(
    study_dir: Path,
) -> None:
    cli = CliRunner()
    args = ["study", "baseline", str(study_dir), "--base-model", "tiny", "--max-length", "64"]
    first = cli.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "before finetuning: eval_loss" in first.output and "recorded earlier" not in first.output
    settings = runner.settings_for("tiny", max_length=64)
    stored = ResultsStore(study_dir / "results.sqlite", settings.config_key()).baseline()
    assert stored is not None and stored["eval_tokens"] > 0
    # evaluated again (force), the untrained base gives the same loss
    direct, computed = runner.evaluate_baseline(study_dir, settings, force=True)
    assert computed and direct["eval_loss"] == pytest.approx(stored["eval_loss"], rel=1e-6)
    assert direct["eval_tokens"] == stored["eval_tokens"]
    again = cli.invoke(main, args)
    assert again.exit_code == 0 and "recorded earlier" in again.output
    # another configuration has no baseline yet: it is computed for it
    other = cli.invoke(main, [*args, "--seed", "1"])
    assert other.exit_code == 0 and "recorded earlier" not in other.output
    run = cli.invoke(main, ["study", "run", *args[2:], "--limit", "1", "-q"])
    assert run.exit_code == 0, run.output
    status = cli.invoke(main, ["study", "status", str(study_dir)])
    assert f"baseline eval_loss {stored['eval_loss']:.4f} before finetuning" in status.output
    assert "candidates" in status.output
