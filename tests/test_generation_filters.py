"""Self-Instruct filters, completion parsing, prompts and seed reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instructmining.errors import DataError
from instructmining.generation import filters as F
from instructmining.generation.parsing import (
    parse_input_first,
    parse_instruction_list,
    parse_output_first,
)
from instructmining.generation.prompts import (
    classify_prompt,
    instance_prompt,
    instruction_prompt,
    parse_yes_no,
)
from instructmining.generation.seeds import Task, read_tasks


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Sort these three numbers", None),
        ("Sort three numbers", F.TOO_SHORT),
        ("word " * 151, F.TOO_LONG),
        ("Describe the image shown below", F.BLOCKLIST),
        ("Describe the Images shown below", F.BLOCKLIST),  # case-insensitive, as in the paper
        ("Tell me how to go to the station", F.BLOCKLIST),
        ("Explain this map legend please", F.BLOCKLIST),
        ("Write a program that adds two numbers", F.BANNED_PREFIX),
        ("Write a poem about the sea", None),
        ('"Quote" the following sentence back', F.PUNCTUATION),
        ("Écris une phrase en français, merci", F.NON_ASCII),
        ("Reformat the filename below as lowercase", None),  # "filename" is not "file"
    ],
)
def test_instruction_filter_reasons(text: str, reason: str | None) -> None:
    assert F.InstructionFilter().check(text) == reason


def test_instruction_filter_settings_are_configurable() -> None:
    flt = F.InstructionFilter(
        min_words=2, max_words=3, blocklist=("video",), banned_prefixes=("Sing",)
    )
    assert flt.check("Hum along") is None
    assert flt.check("Play the video") == F.BLOCKLIST
    assert flt.check("Describe the image") is None
    assert flt.check("Sing a song") == F.BANNED_PREFIX
    assert flt.check("one two three four") == F.TOO_LONG
    with pytest.raises(ValueError, match="word limits"):
        F.InstructionFilter(min_words=5, max_words=4)


def test_clean_instances_drops_each_bad_kind() -> None:
    kept, dropped = F.clean_instances(
        [
            ("same", "same"),
            ("x", ""),
            ("Input:", "y"),
            ("a", "answer:"),
            ("a", "b"),
            ("a", "b"),
            ("", "no input"),
        ]
    )
    assert kept == [("a", "b"), ("", "no input")]
    assert dropped == {
        F.SAME_INPUT_OUTPUT: 1,
        F.EMPTY_OUTPUT: 1,
        F.ENDS_WITH_COLON: 2,
        F.DUPLICATE_INSTANCE: 1,
    }


def test_conflicting_outputs_drop_the_task() -> None:
    kept, dropped = F.clean_instances([("q", "yes"), ("q", "no"), ("r", "s")])
    assert kept == []
    assert dropped[F.CONFLICTING] == 3
    # empty inputs may have different outputs (tasks without input)
    kept, _ = F.clean_instances([("", "one"), ("", "two")])
    assert kept == [("", "one"), ("", "two")]


def test_clean_instances_caps_the_number() -> None:
    kept, dropped = F.clean_instances([(str(i), f"o{i}") for i in range(8)], max_instances=5)
    assert len(kept) == 5 and dropped[F.OVER_LIMIT] == 3


def test_parse_instruction_list_continues_the_numbering() -> None:
    text = " Name a  fruit\nthat is red.\n10. List two rivers\n11.Bad format kept together\n12 . ok then"
    assert parse_instruction_list(text) == [
        "Name a fruit that is red.",
        "List two rivers 11.Bad format kept together",
        "Ok then",
    ]
    assert parse_instruction_list("") == []
    # a chat model restating the number the prompt ended with
    assert parse_instruction_list("9. Name a river\n10. Name a lake") == [
        "Name a river",
        "Name a lake",
    ]


@given(
    st.lists(st.from_regex(r"[A-Za-z][a-z ]{0,20}[a-z]", fullmatch=True), min_size=1, max_size=6)
)
def test_instruction_list_round_trip(items: list[str]) -> None:
    items = [" ".join(i.split()) for i in items]
    text = " " + "\n".join(f"{9 + k}. {t}" if k else t for k, t in enumerate(items))
    assert parse_instruction_list(text) == [t[0].upper() + t[1:] for t in items]


def test_parse_input_first() -> None:
    text = "Example 1\nInput: 2 + 2\nOutput: 4\nExample 2\nInput: 3 + 1\nOutput: 4 Input: extra"
    assert parse_input_first(text) == [("2 + 2", "4"), ("3 + 1", "4")]
    assert parse_input_first("Output: just an answer") == [("", "just an answer")]
    assert parse_input_first("no markers at all") == []


def test_parse_output_first() -> None:
    text = (
        "Class label: Yes\nInput: It rains.\nClass label: No\nSentence: Sunny.\nClass label: Maybe"
    )
    assert parse_output_first(text) == [
        ("It rains.", "Yes"),
        ("Sentence: Sunny.", "No"),
        ("", "Maybe"),
    ]
    assert parse_output_first("Label: x") == []


def test_prompts_have_the_paper_structure() -> None:
    p = instruction_prompt([f"Task number {i}:" for i in range(8)])
    lines = p.splitlines()
    assert lines[1:9] == [f"{i + 1}. Task number {i}" for i in range(8)]
    assert p.endswith("\n9.")
    c = classify_prompt("Sort the words.")
    assert c.endswith("Task: Sort the words.\nClassification:")
    assert "Class label:" in instance_prompt("Tag it.", classification=True)
    assert "Class label:" not in instance_prompt("Tag it.", classification=False)
    assert parse_yes_no(" Yes") and not parse_yes_no(" No") and not parse_yes_no("")


def test_read_tasks_nested_and_plain(tmp_path: Path) -> None:
    nested = tmp_path / "seeds.jsonl"
    nested.write_text(
        json.dumps(
            {
                "id": "s1",
                "instruction": "Add the numbers.",
                "instances": [{"input": "1 2", "output": "3"}],
                "is_classification": False,
            }
        )
        + "\n",
        encoding="utf-8",
    )
    (t,) = read_tasks(nested)
    assert t == Task("Add the numbers.", (("1 2", "3"),), False)
    assert t.to_nested()["id"] == "s1"
    plain = tmp_path / "plain.json"
    plain.write_text(
        json.dumps(
            [
                {"instruction": "Say hi.", "input": "", "output": "Hi"},
                {"instruction": "Say hi.", "input": "loud", "output": "HI"},
                {"instruction": "Count.", "output": "1 2 3"},
            ]
        ),
        encoding="utf-8",
    )
    tasks = read_tasks(plain)
    assert [(t.instruction, len(t.instances)) for t in tasks] == [("Say hi.", 2), ("Count.", 1)]
    assert tasks[0].to_rows()[1] == {
        "instruction": "Say hi.",
        "input": "loud",
        "output": "HI",
        "is_classification": None,
    }


def test_read_tasks_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"instruction": "ok", "instances": []})
        + "\n"
        + json.dumps({"instruction": "", "instances": []})
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: field 'instruction'"):
        read_tasks(bad)
    with pytest.raises(DataError, match="no such file"):
        read_tasks(tmp_path / "missing.jsonl")


def test_read_published_seeds(shared_data: Path) -> None:
    tasks = read_tasks(shared_data / "seeds/self_instruct_seed_tasks_175.jsonl")
    assert len(tasks) == 175
    assert sum(t.is_classification is True for t in tasks) > 0
    assert all(t.instances for t in tasks)
