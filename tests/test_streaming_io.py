import csv
import gzip
import json
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from instructmining.errors import DataError, InputError
from instructmining.readers import read_records, stream_records
from instructmining.writers import open_rows, write_rows

GOOD = [
    {
        "instruction": f"Question\n{i}?" if i == 1 else f"Question {i}?",
        "input": "",
        "output": f"A{i}.",
    }
    for i in range(8)
]


def write_text(path, text):
    raw = text.encode()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def make_source(tmp_path, name):
    """A file of the 8 GOOD rows with one bad entry in 5th place; (path, its line or row)."""
    path = tmp_path / name
    if ".jsonl" in name:
        lines = [json.dumps(r) for r in GOOD]
        lines.insert(4, '{"instruction": "oops", ')
        return write_text(path, "\n".join(lines) + "\n"), 5
    if ".csv" in name:
        with open(tmp_path / "plain.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["instruction", "input", "output"])
            for i, row in enumerate(GOOD):
                if i == 4:
                    writer.writerow(["too", "many", "values", "here"])
                writer.writerow(row.values())
        # header, rows 0 and 1 (two lines: a quoted newline), rows 2 and 3, then the bad row
        return write_text(path, (tmp_path / "plain.csv").read_text()), 7
    if name.endswith(".parquet"):
        rows = [*GOOD[:4], {"instruction": "no output", "input": "", "output": None}, *GOOD[4:]]
        pd.DataFrame(rows).to_parquet(path)
        return path, 5
    return write_text(path, json.dumps([*GOOD[:4], 42, *GOOD[4:]])), 5


FORMATS = ["d.jsonl", "d.jsonl.gz", "d.csv", "d.csv.gz", "d.parquet", "d.json"]


@pytest.mark.parametrize("name", FORMATS)
def test_batches_equal_read_records(tmp_path, name):
    path, bad_at = make_source(tmp_path, name)
    stream = stream_records(path, on_error="skip", batch_size=3)
    assert (stream.schema, stream.rejects, stream.n_records) == ("unknown", [], 0)
    batches = list(stream)
    whole = read_records(path, on_error="skip")
    assert [len(b) for b in batches] == [3, 3, 2]
    flat = [r for b in batches for r in b]
    assert flat == whole.records
    assert [dict(r.fields) for r in flat] == [dict(r.fields) for r in whole.records]
    assert [r.instruction for r in flat] == [r["instruction"] for r in GOOD]
    assert (stream.schema, stream.location, stream.n_records) == ("alpaca", whole.location, 8)
    assert stream.rejects == whole.rejects
    assert [r.line for r in stream.rejects] == [bad_at]


def test_iterating_again_starts_over(tmp_path):
    path, _ = make_source(tmp_path, "d.jsonl")
    stream = stream_records(path, on_error="skip", batch_size=5)
    first = [r for b in stream for r in b]
    second = [r for b in stream for r in b]
    assert first == second
    assert (len(stream.rejects), stream.n_records) == (1, 8)


def test_a_bad_line_raises_when_its_batch_is_reached(tmp_path):
    path, _ = make_source(tmp_path, "d.jsonl")
    batches = iter(stream_records(path, batch_size=3))
    assert len(next(batches)) == 3
    with pytest.raises(DataError, match=r"d\.jsonl, line 5: invalid JSON") as err:
        next(batches)
    assert err.value.line == 5


def test_lines_split_on_newline_only(tmp_path):
    rows = [{"instruction": "a\u2028b\u0085c", "output": "x"}, {"instruction": "q", "output": "y"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path = write_text(tmp_path / "d.jsonl", text + "[1]\n")
    stream = stream_records(path, on_error="skip")
    assert [r.instruction for b in stream for r in b] == ["a\u2028b\u0085c", "q"]
    assert [r.line for r in stream.rejects] == [3]


def test_stream_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):  # checked before iterating
        stream_records(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="batch_size"):
        stream_records(tmp_path / "absent.jsonl", batch_size=0)
    (tmp_path / "e.jsonl").write_text("\n \n")
    with pytest.raises(DataError, match=r"e\.jsonl: the file is empty"):
        list(stream_records(tmp_path / "e.jsonl"))
    (tmp_path / "z.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"z\.jsonl\.gz: not a valid gzip file \("):
        list(stream_records(tmp_path / "z.jsonl.gz"))
    good = (json.dumps(GOOD[0]) + "\n").encode()
    (tmp_path / "l.jsonl").write_bytes(good + b'{"instruction": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"byte offset {len(good) + 20} \(line 2\)"):
        list(stream_records(tmp_path / "l.jsonl", on_error="skip"))


BASE = "".join("abcdefghij"[j % 10] + " " * (j % 7 == 6) for j in range(1200))


def _text(i, n):
    k = i % 600
    return f"{i}: {BASE[k : k + n]}"


def _peak_mb(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def test_streaming_memory_stays_flat(tmp_path):
    """20 MB of JSONL read in batches of 1000 peaks at a few MB; read whole, above the size."""
    path = tmp_path / "big.jsonl.gz"
    n = 20_000
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
        for i in range(n):  # ~1000 characters a line; ids spare hashing the texts
            row = {"id": str(i), "instruction": _text(i, 490), "output": _text(3 * i, 490)}
            fh.write(json.dumps(row) + "\n")

    def stream():
        sizes = [len(b) for b in stream_records(path, batch_size=1000)]
        assert sizes == [1000] * (n // 1000)

    streamed = _peak_mb(stream)
    whole = _peak_mb(lambda: read_records(path))
    print(f"tracemalloc peak: stream_records {streamed:.1f} MB, read_records {whole:.1f} MB")
    assert streamed < 8
    assert whole > 20


ROWS = [
    {"id": "a", "x": 1.5, "n": np.int64(3), "tags": ["p", "q"], "meta": {"k": "é"}, "note": "s"},
    {"id": "b", "x": float("nan"), "n": np.int64(4), "tags": [], "meta": {"k": ""}, "note": "t"},
    {"id": "c", "x": 2.0, "n": np.int64(5), "tags": ["r"], "meta": {"k": "z"}, "note": None},
    {"id": "d", "x": 3.0, "n": np.int64(6), "tags": ["s"], "meta": {"k": "y"}, "note": None},
    {"id": "e", "x": 4.0, "n": np.int64(7), "tags": [], "meta": {"k": "x"}, "note": "u"},
    {"id": "f", "x": 5.0, "tags": ["t"], "meta": {"k": "w"}, "note": None},  # no "n"
]


def read_back(path):
    """The text written (unzipped), or a Parquet file's schema and rows."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return table.schema.remove_metadata(), repr(table.to_pylist())  # repr: nan == nan
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode()


@pytest.mark.parametrize("name", ["o.jsonl", "o.jsonl.gz", "o.csv", "o.json", "o.parquet"])
def test_open_rows_in_batches_equals_write_rows(tmp_path, name):
    (tmp_path / "one").mkdir()
    once = write_rows(ROWS, tmp_path / "one" / name)
    with open_rows(tmp_path / name) as writer:
        writer.write(ROWS[:2])
        # "note" is all null in this batch (as a DataFrame for Parquet: a column of type null)
        writer.write(pd.DataFrame(ROWS[2:4]) if name.endswith(".parquet") else ROWS[2:4])
        writer.write(ROWS[4:])
        assert writer.n_rows == len(ROWS)
    assert writer.path == tmp_path / name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "one"])
    back, expected = read_back(tmp_path / name), read_back(once)
    if name.endswith(".json"):
        assert json.loads(back) == json.loads(expected)
    else:
        assert back == expected  # jsonl and csv: the same text
    if ".jsonl" in name:
        rows = [json.loads(line) for line in back.splitlines()]
        assert rows[1]["x"] is None and rows[0]["n"] == 3 and rows[5] == ROWS[5]


@pytest.mark.parametrize(("name", "text"), [("o.json", "[]\n"), ("o.jsonl", ""), ("o.csv", "\r\n")])
def test_an_empty_writer_writes_what_write_rows_did(tmp_path, name, text):
    with open_rows(tmp_path / name) as writer:
        writer.write([])
    assert writer.n_rows == 0
    assert (tmp_path / name).read_bytes().decode() == text


def test_an_empty_parquet_writer_writes_a_readable_file(tmp_path):
    with open_rows(tmp_path / "o.parquet"):
        pass
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 0


@pytest.mark.parametrize("name", ["o.jsonl.gz", "o.csv", "o.parquet"])
def test_failure_inside_the_block_leaves_no_file(tmp_path, name):
    with pytest.raises(RuntimeError), open_rows(tmp_path / name) as writer:
        writer.write(ROWS[:2])
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / name).write_bytes(b"old")
    with pytest.raises(RuntimeError), open_rows(tmp_path / name, overwrite=True) as writer:
        writer.write(ROWS[:2])
        raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_bytes() == b"old"


def test_csv_refuses_a_column_the_header_lacks(tmp_path):
    match = "column 'extra' is not in the CSV header"
    with pytest.raises(InputError, match=match), open_rows(tmp_path / "o.csv") as writer:
        writer.write([{"a": 1}])
        writer.write([{"a": 2, "extra": 3}])
    assert list(tmp_path.iterdir()) == []


def test_parquet_names_a_column_it_cannot_cast(tmp_path):
    out = tmp_path / "o.parquet"
    match = "column 'x' cannot be written as int64"
    with pytest.raises(InputError, match=match), open_rows(out) as writer:
        writer.write([{"x": 1}])
        writer.write([{"x": "abc"}])
    match = "column 'y' is not in the Parquet schema"
    with pytest.raises(InputError, match=match), open_rows(out) as writer:
        writer.write([{"x": 1}])
        writer.write([{"x": 2, "y": 1}])
    assert list(tmp_path.iterdir()) == []


def test_open_rows_checks_the_output_first(tmp_path):
    (tmp_path / "o.jsonl").write_text("keep\n")
    with pytest.raises(InputError, match="--overwrite"), open_rows(tmp_path / "o.jsonl"):
        pytest.fail("the block must not run")
    assert (tmp_path / "o.jsonl").read_text() == "keep\n"
