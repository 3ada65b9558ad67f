"""The closed loop generate → score → select → generate, with an offline rule and a scripted model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from generation_doubles import FakeOpenAIServer, ScriptedBackend

from instructmining.cli import main
from instructmining.errors import InstructMiningError
from instructmining.generation.loop import run_loop, tasks_from_rows
from instructmining.generation.seeds import Task
from instructmining.indicators.registry import create
from instructmining.regression import Rule

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
    ]
]


def offline_rule() -> Rule:
    """Longer outputs predict a lower loss: a rule that needs no model."""
    return Rule(
        name="test-longer-outputs",
        intercept=0.5,
        coefficients={"output_length": -0.01, "input_length": 0.001},
        indicators={n: create(n).params() for n in ("output_length", "input_length")},
    )


def test_loop_selects_and_feeds_the_next_round(tmp_path: Path) -> None:
    seen_rounds: list[dict] = []
    result = run_loop(
        SEEDS,
        tmp_path,
        backend=ScriptedBackend(),
        rule=offline_rule(),
        rounds=2,
        per_round=12,
        keep=6,
        on_round=seen_rounds.append,
    )
    assert [r["round"] for r in result.rounds] == [0, 1] == [r["round"] for r in seen_rounds]
    for r in result.rounds:
        assert r["kept_tasks"] == 12 and r["selected"] == 6
        # the selection keeps the records with the lowest predicted loss
        assert r["mean_predicted_loss_selected"] <= r["mean_predicted_loss"]
        assert (
            r["mean_indicators_selected"]["output_length"] >= r["mean_indicators"]["output_length"]
        )
        assert r["generated"] >= r["kept_tasks"] and r["dropped"]
    selected0 = [
        json.loads(x) for x in (tmp_path / "round_0/selected.jsonl").read_text().splitlines()
    ]
    pool0 = {row["instruction"] for row in selected0}
    # round 1 was prompted with round 0's selection as its machine pool
    state1 = json.loads((tmp_path / "round_1/state.json").read_text())
    assert (
        state1["fingerprint"]["machine_pool"]
        != json.loads((tmp_path / "round_0/state.json").read_text())["fingerprint"]["machine_pool"]
    )
    kept1 = {
        json.loads(x)["instruction"]
        for x in (tmp_path / "round_1/tasks.jsonl").read_text().splitlines()
    }
    assert not (kept1 & pool0)  # the pool is in the similarity filter
    assert (tmp_path / "loop.png").stat().st_size > 0
    assert "mean_predicted_loss" in (tmp_path / "loop_stats.csv").read_text().splitlines()[0]

    # a rerun reuses the finished rounds without asking the model again
    again = run_loop(
        SEEDS,
        tmp_path,
        backend=(b := ScriptedBackend()),
        rule=offline_rule(),
        rounds=2,
        per_round=12,
        keep=6,
    )
    assert b.calls == 0 and again.rounds == result.rounds
    with pytest.raises(InstructMiningError, match="differs in: keep"):
        run_loop(SEEDS, tmp_path, backend=ScriptedBackend(), rule=offline_rule(), keep=5)


def test_tasks_from_rows_groups_instances() -> None:
    rows = [
        {"instruction": "A", "input": "1", "output": "x", "is_classification": True},
        {"instruction": "B", "input": "", "output": "y"},
        {"instruction": "A", "input": "2", "output": "z", "is_classification": True},
    ]
    assert tasks_from_rows(rows) == [
        Task("A", (("1", "x"), ("2", "z")), True),
        Task("B", (("", "y"),), None),
    ]


def test_loop_command_end_to_end(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(t.to_nested()) + "\n" for t in SEEDS), encoding="utf-8")
    rule = tmp_path / "rule.json"
    offline_rule().save(rule)
    with FakeOpenAIServer() as server:
        res = CliRunner().invoke(
            main,
            [
                "loop",
                "--seeds",
                str(seeds),
                "--llm",
                "openai:m",
                "--base-url",
                server.base_url,
                "--rule",
                str(rule),
                "--rounds",
                "2",
                "--per-round",
                "8",
                "--keep",
                "4",
                "-o",
                str(tmp_path / "loop"),
                "-q",
            ],
        )
    assert res.exit_code == 0, res.output
    head = res.output.splitlines()[0].split()
    assert head[:3] == ["round", "generated", "accepted_instructions"]
    assert "mean_predicted_loss_selected" in head
    assert "loop.png" in res.output


def test_loop_command_unknown_rule(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main,
        [
            "loop",
            "--seeds",
            "s.jsonl",
            "--llm",
            "openai:m",
            "--rule",
            "no-such-rule",
            "-o",
            str(tmp_path),
        ],
    )
    assert res.exit_code != 0
    assert "no-such-rule" in res.output


def test_loop_fails_before_generating_when_the_rule_needs_a_missing_model(tmp_path: Path) -> None:
    from instructmining.selection import MissingIndicatorError

    rule = Rule(
        name="needs-reward",
        intercept=0.5,
        coefficients={"reward": -0.1},
        indicators={"reward": {"name": "reward", "model": str(tmp_path / "no-such-checkpoint")}},
    )
    backend = ScriptedBackend()
    with pytest.raises(MissingIndicatorError, match="reward"):
        run_loop(SEEDS, tmp_path / "out", backend=backend, rule=rule, rounds=1, per_round=3, keep=2)
    assert backend.calls == 0
