"""The resumable Self-Instruct loop, with a scripted in-process model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from generation_doubles import ScriptedBackend, ScriptedKill

from instructmining.errors import InstructMiningError
from instructmining.generation.generator import (
    FLAT_FILE,
    STATE_FILE,
    TASKS_FILE,
    SelfInstructGenerator,
)
from instructmining.generation.rouge import RougeLIndex
from instructmining.generation.seeds import Task, read_tasks
from instructmining.readers import read_records

SEEDS = [
    Task(text, (("", "an answer"),), clf)
    for text, clf in [
        ("Give three tips for keeping a houseplant alive.", False),
        ("Translate the greeting into French and Spanish.", False),
        ("Decide whether the sentence is sarcastic or sincere.", True),
        ("Summarize the paragraph in one sentence.", False),
        ("Suggest a name for a cat that likes boxes.", False),
        ("Sort the list of numbers from smallest to largest.", False),
        ("Tell whether the review below is positive or negative.", True),
        ("Explain what a leap year is to a child.", False),
        ("Find the odd word out in the group of words.", True),
        ("Write a haiku about the first snow of winter.", False),
    ]
]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_generates_n_filtered_tasks(tmp_path: Path) -> None:
    gen = SelfInstructGenerator(backend=ScriptedBackend(), n=30)
    result = gen.run(SEEDS, tmp_path)
    assert result.complete and len(result.tasks) == 30
    tasks = lines(tmp_path / TASKS_FILE)
    assert len(tasks) == 30
    texts = [t["instruction"] for t in tasks]
    assert len(set(texts)) == 30
    # no kept instruction is too similar to a seed or to another kept one
    index = RougeLIndex(s.instruction for s in SEEDS)
    for text in texts:
        assert not index.any_above(text, 0.7)
        index.add(text)
    dropped = result.dropped()
    assert dropped["blocklisted_word"] > 0 and dropped["too_short"] > 0
    assert dropped["rouge_similar"] + dropped.get("duplicate_instruction", 0) > 0
    # every task has instances; classification tasks were generated output-first
    assert all(t["instances"] for t in tasks)
    clf = [t for t in tasks if t["is_classification"]]
    assert clf and all(i["output"] in ("Good", "Bad") for t in clf for i in t["instances"])
    # the flat file is what the project's readers read: one Alpaca row per instance
    flat = read_records(tmp_path / FLAT_FILE)
    assert flat.schema == "alpaca"
    assert len(flat.records) == sum(len(t["instances"]) for t in tasks)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["n_kept"] == 30
    assert sum(r["kept"] for r in state["rounds"]) == 30
    assert state["usage"]["requests"] == gen.backend.usage.requests > 0
    assert state["usage"]["prompt_tokens"] == gen.backend.usage.prompt_tokens > 0
    r0 = state["rounds"][0]
    assert r0["generated"] == r0["accepted_instructions"] + sum(
        v for k, v in r0["dropped"].items() if k in _INSTRUCTION_REASONS
    )


_INSTRUCTION_REASONS = {
    "too_short",
    "too_long",
    "blocklisted_word",
    "banned_prefix",
    "starts_with_punctuation",
    "starts_with_non_ascii",
    "duplicate_instruction",
    "rouge_similar",
    "truncated_response",
}


def test_prompts_use_six_seeds_and_two_machine_instructions(tmp_path: Path) -> None:
    seen: list[str] = []

    class Recording(ScriptedBackend):
        def complete(self, prompts, params):  # type: ignore[no-untyped-def]
            seen.extend(p for p in prompts if p.endswith("\n9."))
            return super().complete(prompts, params)

    SelfInstructGenerator(backend=Recording(), n=25).run(SEEDS, tmp_path)
    seeds = {s.instruction for s in SEEDS}
    counts = []
    for prompt in seen:
        items = [ln.split(". ", 1)[1] for ln in prompt.splitlines()[1:9]]
        assert len(items) == 8
        counts.append(sum(i not in seeds for i in items))
    assert counts[0] == 0  # first round: the machine pool is empty
    assert max(counts) == 2 and set(counts) <= {0, 1, 2}


def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    SelfInstructGenerator(backend=ScriptedBackend(), n=40).run(SEEDS, reference)

    out = tmp_path / "killed"
    with pytest.raises(ScriptedKill):
        SelfInstructGenerator(backend=ScriptedBackend(fail_after=70), n=40).run(SEEDS, out)
    partial = lines(out / TASKS_FILE)
    assert 0 < len(partial) < 40
    # a kill in the middle of an append leaves half a line: resume must drop it
    with open(out / TASKS_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"instruction": "half a li')
    second = ScriptedBackend()
    result = SelfInstructGenerator(backend=second, n=40).run(SEEDS, out)
    assert result.resumed_from == len(partial)
    state = json.loads((out / STATE_FILE).read_text())
    reference_state = json.loads((reference / STATE_FILE).read_text())
    # usage covers both sessions' finished rounds: the same as the uninterrupted run
    assert state["usage"] == reference_state["usage"]
    assert second.usage.requests < state["usage"]["requests"]
    assert lines(out / TASKS_FILE) == lines(reference / TASKS_FILE)
    assert (out / FLAT_FILE).read_text() == (reference / FLAT_FILE).read_text()
    texts = [t["instruction"] for t in lines(out / TASKS_FILE)]
    assert len(texts) == len(set(texts)) == 40


def test_resume_after_the_statistics_were_lost(tmp_path: Path) -> None:
    SelfInstructGenerator(backend=ScriptedBackend(), n=20).run(SEEDS, tmp_path)
    (tmp_path / STATE_FILE).unlink()
    result = SelfInstructGenerator(backend=ScriptedBackend(), n=35).run(SEEDS, tmp_path)
    assert len(result.tasks) == 35 and result.resumed_from == 20
    assert any(r.get("recovered") for r in result.rounds)
    assert len({t["instruction"] for t in lines(tmp_path / TASKS_FILE)}) == 35


def test_asking_for_more_continues_a_finished_run(tmp_path: Path) -> None:
    SelfInstructGenerator(backend=ScriptedBackend(), n=10).run(SEEDS, tmp_path)
    result = SelfInstructGenerator(backend=ScriptedBackend(), n=10).run(SEEDS, tmp_path)
    assert result.complete and len(result.tasks) == 10 and result.rounds[-1]["round"] == 0
    result = SelfInstructGenerator(backend=ScriptedBackend(), n=25).run(SEEDS, tmp_path)
    assert len(lines(tmp_path / TASKS_FILE)) == 25


def test_other_settings_refuse_to_resume(tmp_path: Path) -> None:
    SelfInstructGenerator(backend=ScriptedBackend(), n=5).run(SEEDS, tmp_path)
    with pytest.raises(InstructMiningError, match=r"other settings \(differs in: seed\)"):
        SelfInstructGenerator(backend=ScriptedBackend(), n=9, seed=1).run(SEEDS, tmp_path)
    with pytest.raises(InstructMiningError, match="differs in: seeds"):
        SelfInstructGenerator(backend=ScriptedBackend(), n=9).run(SEEDS[:-1], tmp_path)


def test_machine_pool_feeds_prompts_and_similarity(tmp_path: Path) -> None:
    pool = [Task("Rewrite bako tifu mele in the passive voice.", (("", "x"),))]
    prompts: list[str] = []

    class Recording(ScriptedBackend):
        def complete(self, prompts_, params):  # type: ignore[no-untyped-def]
            prompts.extend(p for p in prompts_ if p.endswith("\n9."))
            return super().complete(prompts_, params)

    SelfInstructGenerator(backend=Recording(), n=5).run(SEEDS, tmp_path, machine_pool=pool)
    assert all(pool[0].instruction in p for p in prompts[:5])
    kept = [t["instruction"] for t in lines(tmp_path / TASKS_FILE)]
    assert pool[0].instruction not in kept


def test_stops_when_nothing_is_kept(tmp_path: Path) -> None:
    class Silent(ScriptedBackend):
        def complete(self, prompts, params):  # type: ignore[no-untyped-def]
            return [c.__class__("", "stop") for c in super().complete(prompts, params)]

    result = SelfInstructGenerator(backend=Silent(), n=5, max_idle_rounds=3).run(SEEDS, tmp_path)
    assert not result.complete and len(result.rounds) == 3
    assert "3 rounds in a row kept no task" in result.message


def test_truncated_list_is_discarded(tmp_path: Path) -> None:
    class Truncating(ScriptedBackend):
        def complete(self, prompts, params):  # type: ignore[no-untyped-def]
            out = super().complete(prompts, params)
            if prompts[0].endswith("\n9."):
                out = [c.__class__(c.text, "length") for c in out]
            return out

    result = SelfInstructGenerator(backend=Truncating(), n=3, max_idle_rounds=1).run(
        SEEDS, tmp_path
    )
    assert result.tasks == []
    assert result.dropped()["truncated_response"] == 30


def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'n' parameter must be >= 1"):
        SelfInstructGenerator(backend=ScriptedBackend(), n=0).run(SEEDS, tmp_path)
    with pytest.raises(ValueError, match="num_machine_instructions"):
        SelfInstructGenerator(
            backend=ScriptedBackend(), num_prompt_instructions=2, num_machine_instructions=3
        ).run(SEEDS, tmp_path)


def test_with_the_published_seeds(shared_data: Path, tmp_path: Path) -> None:
    seeds = read_tasks(shared_data / "seeds/self_instruct_seed_tasks_175.jsonl")
    result = SelfInstructGenerator(backend=ScriptedBackend(), n=20).run(seeds, tmp_path)
    assert len(result.tasks) == 20
