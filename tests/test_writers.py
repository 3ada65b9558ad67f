import gzip
import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmining.errors import InstructMiningError, OutputExistsError
from instructmining.readers import read_records
from instructmining.writers import atomic_path, check_output, write_json, write_rows

ROWS = [{"id": "a", "x": 1.5, "tags": ["p", "q"]}, {"id": "b", "x": float("nan"), "tags": []}]


@pytest.mark.parametrize(
    "name", ["o.jsonl", "o.jsonl.gz", "o.csv", "o.csv.gz", "o.parquet", "o.json"]
)
def test_write_each_format(tmp_path, name):
    out = write_rows(ROWS, tmp_path / name)
    assert out.exists()
    if name.endswith(".parquet"):
        frame = pd.read_parquet(out)
        assert list(frame["id"]) == ["a", "b"]
    elif ".jsonl" in name:
        raw = out.read_bytes()
        text = gzip.decompress(raw).decode() if name.endswith(".gz") else raw.decode()
        rows = [json.loads(line) for line in text.splitlines()]
        assert rows[1]["x"] is None  # NaN is written as null, keeping the file valid JSON
        assert rows[0]["tags"] == ["p", "q"]


def test_refuses_existing_output_unless_overwrite(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_rows(ROWS, out)
    assert out.read_text() == "keep me\n"
    write_rows(ROWS, out, overwrite=True)
    assert out.read_text().count("\n") == 2


def test_never_overwrites_an_input(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"instruction": "a", "output": "b"}\n')
    with pytest.raises(InstructMiningError, match="input file"):
        check_output(src, overwrite=True, inputs=[src])


def test_unknown_output_type_and_missing_folder(tmp_path):
    with pytest.raises(InstructMiningError, match="cannot write this file type"):
        check_output(tmp_path / "o.xlsx")
    with pytest.raises(InstructMiningError, match="does not exist"):
        check_output(tmp_path / "nope" / "o.jsonl")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "o.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]


def test_write_json(tmp_path):
    path = write_json({"a": [1, 2]}, tmp_path / "s.json")
    assert json.loads(path.read_text()) == {"a": [1, 2]}


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.tuples(texts, texts, texts), min_size=1, max_size=8),
    fmt=st.sampled_from(["jsonl", "csv", "parquet"]),
)
def test_records_round_trip(tmp_path_factory, rows, fmt):
    folder = tmp_path_factory.mktemp("rt")
    data = [{"instruction": a, "input": b, "output": c} for a, b, c in rows]
    path = write_rows(data, folder / f"d.{fmt}")
    back = read_records(path)
    assert [(r.instruction, r.input, r.output) for r in back.records] == [
        (a, b, c) for a, b, c in rows
    ]


def test_outputs_get_the_usual_file_mode(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        out = write_rows(ROWS, tmp_path / "o.jsonl")
    finally:
        os.umask(mask)
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
