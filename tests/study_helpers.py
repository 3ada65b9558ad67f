"""Synthetic sources and D_eval for the study tests (data written here, nothing copied)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = [
    "red",
    "green",
    "blue",
    "small",
    "large",
    "quick",
    "slow",
    "bright",
    "dark",
    "warm",
    "cold",
    "soft",
    "loud",
    "quiet",
]


def alpaca_rows(n: int, *, offset: int = 0) -> list[dict[str, str]]:
    """Arithmetic and colour tasks in the Alpaca layout, varied in length."""
    rows = []
    for i in range(offset, offset + n):
        a, b = i % 17, (i * 7) % 23
        extra = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(i % 9))
        rows.append(
            {
                "instruction": f"Add the numbers {a} and {b}.",
                "input": "" if i % 3 else f"Context {extra}",
                "output": f"The sum of {a} and {b} is {a + b}. {extra}".strip(),
            }
        )
    return rows


def dolly_rows(n: int) -> list[dict[str, str]]:
    """Describe-a-word tasks in the Dolly layout."""
    return [
        {
            "instruction": f"Describe the word {WORDS[i % len(WORDS)]} in item {i}.",
            "context": "",
            "response": " ".join([WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 11)]),
            "category": "open_qa",
        }
        for i in range(n)
    ]


def write_sources(folder: Path, n_alpaca: int = 60, n_dolly: int = 40) -> dict[str, Path]:
    """Two source files (Alpaca JSON, Dolly JSONL) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    alpaca = folder / "alpaca.json"
    alpaca.write_text(json.dumps(alpaca_rows(n_alpaca)))
    dolly = folder / "dolly.jsonl"
    dolly.write_text("\n".join(json.dumps(r) for r in dolly_rows(n_dolly)) + "\n")
    return {"alpaca": alpaca, "dolly": dolly}


def write_eval(folder: Path, *, overlap_with_alpaca: int = 2) -> list[Path]:
    """A Self-Instruct style file (some tasks copied from the Alpaca source) and Vicuna files."""
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [
        {
            "id": f"user_oriented_task_{i}",
            "motivation_app": "test",
            "instruction": f"Name a colour like {WORDS[i]}.",
            "instances": [{"input": "", "output": f"A colour like {WORDS[i]} is {WORDS[i + 1]}."}],
        }
        for i in range(5)
    ]
    for j, row in enumerate(alpaca_rows(overlap_with_alpaca)):
        tasks.append(
            {
                "id": f"overlap_{j}",
                "instruction": row["instruction"],
                "instances": [{"input": row["input"], "output": "a different answer"}],
            }
        )
    si = folder / "self_instruct.jsonl"
    si.write_text("\n".join(json.dumps(t) for t in tasks) + "\n")
    questions = folder / "questions.jsonl"
    answers = folder / "answers.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps({"question_id": q, "text": f"How is {WORDS[q]} made?", "category": "x"})
            for q in (1, 2, 3)
        )
        + "\n"
    )
    answers.write_text(
        "\n".join(
            json.dumps(
                {
                    "answer_id": f"a{q}",
                    "model_id": "m",
                    "question_id": q,
                    "text": f"{WORDS[q]} is made slowly and {WORDS[q + 2]}.",
                }
            )
            for q in (3, 1, 2)
        )
        + "\n"
    )
    return [si, questions, answers]
