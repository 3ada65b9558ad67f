import csv
import gzip
import json

import pytest

from instructmining.errors import DataError
from instructmining.readers import read_records

ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hello in Spanish.", "output": "Hola."},
]


def write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def canon(result):
    return [(r.instruction, r.input, r.output) for r in result.records]


EXPECTED = [
    ("Name a colour.", "", "Blue."),
    ("Add the numbers.", "2 and 3", "5"),
    ("Say hello in Spanish.", "", "Hola."),
]


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl(tmp_path, gz):
    path = write_jsonl(tmp_path / ("d.jsonl.gz" if gz else "d.jsonl"), ALPACA, gz)
    result = read_records(path)
    assert canon(result) == EXPECTED
    assert result.schema == "alpaca"


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_json_array_or_object(tmp_path, wrap, gz):
    doc = {"data": ALPACA, "version": 1} if wrap else ALPACA
    raw = json.dumps(doc, indent=2).encode()
    path = tmp_path / ("d.json.gz" if gz else "d.json")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    assert canon(read_records(path)) == EXPECTED


def test_json_object_with_two_arrays_is_refused(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"a": ALPACA, "b": ALPACA}))
    with pytest.raises(DataError, match="exactly one array"):
        read_records(path)


@pytest.mark.parametrize("gz", [False, True])
def test_csv(tmp_path, gz):
    path = tmp_path / ("d.csv.gz" if gz else "d.csv")
    with open(tmp_path / "plain.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["instruction", "input", "output"])
        writer.writeheader()
        for row in ALPACA:
            writer.writerow(row)
    raw = (tmp_path / "plain.csv").read_bytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    assert canon(read_records(path)) == EXPECTED


def test_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame(ALPACA).to_parquet(path)
    assert canon(read_records(path)) == EXPECTED


def test_hf_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([dict(r, input=r.get("input", "")) for r in ALPACA])
    ds.save_to_disk(str(tmp_path / "ds"))
    assert canon(read_records(tmp_path / "ds")) == EXPECTED
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    assert canon(read_records(tmp_path / "dd")) == EXPECTED
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd2"))
    with pytest.raises(DataError, match="splits train, test"):
        read_records(tmp_path / "dd2")
    assert canon(read_records(tmp_path / "dd2" / "test")) == EXPECTED


def test_dolly_schema_and_fields_kept(tmp_path):
    rows = [
        {
            "instruction": "Who wrote it?",
            "context": "A book by Ann.",
            "response": "Ann.",
            "category": "closed_qa",
        }
    ]
    result = read_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert result.schema == "dolly"
    rec = result.records[0]
    assert (rec.instruction, rec.input, rec.output) == ("Who wrote it?", "A book by Ann.", "Ann.")
    assert dict(rec.fields) == rows[0]


def test_prompt_completion(tmp_path):
    result = read_records(
        write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2?", "completion": "4"}])
    )
    assert result.schema == "prompt-completion"
    assert canon(result) == [("2+2?", "", "4")]


def test_messages_multi_turn(tmp_path):
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    }
    result = read_records(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert result.schema == "messages"
    rec = result.records[0]
    assert rec.instruction == "Capital of France?"
    assert rec.output == "Paris."
    assert rec.input == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!"


def test_sharegpt(tmp_path):
    row = {
        "id": "c1",
        "conversations": [
            {"from": "human", "value": "Tell a joke"},
            {"from": "gpt", "value": "Why did..."},
        ],
    }
    result = read_records(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert result.schema == "sharegpt"
    assert canon(result) == [("Tell a joke", "", "Why did...")]
    assert result.records[0].id == "c1"


def test_conversation_without_assistant_is_a_row_error(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}]}]
    with pytest.raises(DataError, match="line 1: the conversation has no assistant turn"):
        read_records(write_jsonl(tmp_path / "d.jsonl", rows))


HH = {
    "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6.",
    "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 7.",
}


def test_hh_rlhf_reads_chosen_and_map_picks_rejected(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [HH])
    chosen = read_records(path)
    assert chosen.schema == "hh-rlhf"
    rec = chosen.records[0]
    assert (rec.instruction, rec.output) == ("And 3+3?", "6.")
    assert rec.input == "User: What is 2+2?\n\nAssistant: 4."
    rejected = read_records(path, field_map="transcript=rejected")
    assert rejected.records[0].output == "7."


def test_map_custom_fields(tmp_path):
    rows = [{"question": "Why?", "answer": "Because.", "uid": 9}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = read_records(path, field_map="instruction=question,output=answer,id=uid")
    assert canon(result) == [("Why?", "", "Because.")]
    assert result.records[0].id == "9"


def test_missing_field_lists_fields_and_suggests_map(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Why?", "answer": "Because."}])
    with pytest.raises(DataError) as err:
        read_records(path)
    msg = str(err.value)
    assert "d.jsonl" in msg and "answer, question" in msg and "--map" in msg


def test_missing_field_in_a_later_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ALPACA[0], {"instruction": "x"}])
    with pytest.raises(
        DataError, match=r"line 2: missing required field output; fields found: instruction"
    ):
        read_records(path)


def test_broken_line_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in ALPACA]
    lines.insert(2, '{"instruction": "oops", ')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl, line 3: invalid JSON") as err:
        read_records(path)
    assert err.value.exit_code == 2
    result = read_records(path, on_error="skip")
    assert canon(result) == EXPECTED
    assert [(r.line, r.reason.split(" (")[0]) for r in result.rejects] == [(3, "invalid JSON")]
    assert result.rejects[0].path == str(path)


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"e\.jsonl: the file is empty"):
        read_records(tmp_path / "e.jsonl")


def test_non_utf8_gives_byte_offset(tmp_path):
    path = tmp_path / "l.jsonl"
    good = (json.dumps(ALPACA[0]) + "\n").encode()
    path.write_bytes(good + b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataError, match=rf"byte offset {len(good) + 20} \(line 2\)"):
        read_records(path)


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="not a saved Hugging Face dataset"):
        read_records(tmp_path / "folder")


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unknown file type"):
        read_records(tmp_path / "d.xml")
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "absent.jsonl")


def test_on_error_is_checked():
    with pytest.raises(ValueError, match="on_error"):
        read_records("x.jsonl", on_error="ignore")  # type: ignore[arg-type]


def test_bad_map_spec():
    with pytest.raises(ValueError, match="unknown target field 'answer'"):
        read_records("x.jsonl", field_map="answer=output")


def test_hh_consecutive_turns_of_one_role_are_merged(tmp_path):
    text = "\n\nHuman: Hi  Human: still me\n\nAssistant: part one\n\nAssistant: part two"
    rec = read_records(
        write_jsonl(tmp_path / "hh.jsonl", [{"chosen": text, "rejected": text}])
    ).records[0]
    assert rec.instruction == "Hi  Human: still me"
    assert rec.output == "part one\n\npart two"
