"""`instructmining generate` end to end against a local OpenAI-style server, and the diversity report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from generation_doubles import FakeOpenAIServer

from instructmining.cli import main
from instructmining.generation.report import diversity_stats, leading_verb, write_report
from instructmining.generation.seeds import Task

SEED_ROWS = [
    {"instruction": t, "instances": [{"input": "", "output": "an answer"}], "is_classification": c}
    for t, c in [
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


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in SEED_ROWS), encoding="utf-8")
    return path


def test_generate_end_to_end_over_http(tmp_path: Path, seeds: Path) -> None:
    out = tmp_path / "run"
    pool = tmp_path / "pool.json"
    pool.write_text(
        json.dumps(
            [{"instruction": "Rewrite bako tifu mele politely.", "input": "", "output": "x"}]
        )
    )
    runner = CliRunner()
    with FakeOpenAIServer(failures=[429, 503]) as server:
        args = ["generate", "--seeds", str(seeds), "--machine-pool", str(pool), "--llm", "openai:m"]
        args += ["--base-url", server.base_url, "--backoff", "0.01", "-o", str(out), "-q"]
        res = runner.invoke(main, [*args, "--n", "15"], env={"OPENAI_API_KEY": "k"})
        assert res.exit_code == 0, res.output
        assert "kept 15 of 15 tasks" in res.output
        assert "2 retries" in res.output
        header = res.output.splitlines()[0].split()
        assert header[:6] == ["round", "generated", "accepted", "clf", "kept", "instances"]
        assert "blocklisted_word" in header  # every drop reason gets a column
        first = len(server.requests)
        res = runner.invoke(main, [*args, "--n", "22", "--no-report"])
        assert res.exit_code == 0, res.output
    assert len(server.requests) > first
    rows = [json.loads(x) for x in (out / "machine_generated.jsonl").read_text().splitlines()]
    tasks = [json.loads(x) for x in (out / "tasks.jsonl").read_text().splitlines()]
    assert len(tasks) == 22 and len({t["instruction"] for t in tasks}) == 22
    assert len(rows) == sum(len(t["instances"]) for t in tasks)
    for name in ("similarity.png", "lengths.png", "verbs.png", "report.md", "report.json"):
        assert (out / "report" / name).stat().st_size > 0
    assert "leading verb" in (out / "report" / "report.md").read_text()


def test_generate_rejects_a_bad_llm_spec(tmp_path: Path, seeds: Path) -> None:
    res = CliRunner().invoke(
        main, ["generate", "--seeds", str(seeds), "--llm", "gpt4", "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 2
    assert "expected openai:MODEL" in res.output


def test_generate_reports_an_unreachable_server_in_one_line(tmp_path: Path, seeds: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(
        main,
        [
            "generate",
            "--seeds",
            str(seeds),
            "--llm",
            "openai-chat:m",
            "--max-retries",
            "0",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "-o",
            str(tmp_path / "o"),
            "-q",
        ],
    )
    assert res.exit_code == 1
    assert res.output.startswith("Error: http://127.0.0.1:")
    assert "gave up after 1 attempts" in res.output


def test_generate_misspelt_hf_model_fails_in_one_line(
    tmp_path: Path, seeds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["generate", "--seeds", str(seeds), "--llm", "hf:smollm2-135m-instuct"]
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 2, res.output  # the command names a model that is not here
    assert res.output.strip().splitlines() == [
        "Error: --llm hf:smollm2-135m-instuct: no catalogue model, local folder or loadable "
        "hub id has this name; did you mean --llm hf:smollm2-135m-instruct?"
    ]
    assert not (tmp_path / "o").exists()  # refused before the output folder was made


@pytest.mark.parametrize("command", ["generate", "loop"])
def test_a_missing_hf_model_writes_nothing(tmp_path: Path, seeds: Path, command: str) -> None:
    out = tmp_path / "o"
    args = [command, "--seeds", str(seeds), "--llm", f"hf:{tmp_path / 'missing'}", "-o", str(out)]
    if command == "loop":
        args += ["--rule", "paper-v1"]
    res = CliRunner().invoke(main, [*args, "-q"])
    assert res.exit_code == 2, res.output
    assert "does not exist" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_generate_missing_seeds_file(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main, ["generate", "--seeds", str(tmp_path / "none.jsonl"), "--llm", "openai:m", "-o", "x"]
    )
    assert res.exit_code == 2 and "no such file" in res.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write a poem about the sea.", ("write", "poem")),
        ("Please give me a list of five fruits", ("give", "list")),
        ("Generate the following sentences again", ("generate", "sentences")),
        ("What is the capital of France?", (None, None)),
        ("Given a list, sort it", (None, None)),
        ("Sort", ("sort", None)),
        ("", (None, None)),
    ],
)
def test_leading_verb_heuristic(text: str, expected: tuple[str | None, str | None]) -> None:
    assert leading_verb(text) == expected


def test_diversity_stats_and_report_files(tmp_path: Path) -> None:
    seeds = [Task("Write a poem about the sea.", (("", "Waves"),))]
    tasks = [
        Task("Write a poem about the sea.", (("", "Blue water"),)),
        Task("Write a story about a dog.", (("a dog", "Once upon a time"),), True),
        Task("What is two plus two?", (("", "4"),)),
    ]
    s = diversity_stats(tasks, seeds)
    assert s["similarity_values"][0] == 1.0
    assert 0 < s["similarity_values"][1] < 1.0
    assert s["top_verbs"] == [("write", 2)]
    assert s["not_imperative"] == 1
    assert s["input_words"]["count"] == 1 and s["output_words"]["count"] == 3
    report = write_report(tasks, seeds, tmp_path / "rep")
    text = report.read_text()
    assert "| write | 2 | poem (1), story (1) |" in text
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["tasks"] == 3
