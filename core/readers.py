"""Read instruction data from JSONL, JSON, CSV, Parquet (each optionally gzipped) or a
Hugging Face `datasets` folder written by ``save_to_disk``.

Every problem is reported as a DataError naming the file and the line (or row)
it was found at. With ``on_error="skip"`` a bad row is set aside as a Reject and
reading goes on; the caller decides where the rejects are written.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from instructmining.errors import DataError
from instructmining.records import Record
from instructmining.schemas import (
    MissingFieldError,
    RowError,
    Schema,
    detect_schema,
    parse_field_map,
)

OnError = Literal["raise", "skip"]
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Reject:
    """A row that was skipped: where it was and why."""

    path: str
    line: int
    reason: str
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "line": self.line, "reason": self.reason, "text": self.text}


@dataclass
class ReadResult:
    """Records read from one source, with the schema found and any skipped rows."""

    path: str
    records: list[Record]
    schema: str
    rejects: list[Reject] = field(default_factory=list)
    location: str = "line"  # what the numbers in rejects count: "line" or "row"


def data_format(path: str | Path) -> tuple[str, bool]:
    """(format, gzipped) from a file name; format is one of jsonl, json, csv, parquet."""
    name = Path(path).name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return ("jsonl" if suffix == ".ndjson" else suffix[1:]), gz
    raise DataError(
        f"unknown file type; expected one of {', '.join(SUFFIXES)} (optionally .gz) "
        "or a folder written by datasets' save_to_disk",
        path=path,
    )


def read_records(
    path: str | Path,
    *,
    field_map: str | Mapping[str, str] | None = None,
    on_error: OnError = "raise",
) -> ReadResult:
    """Read every record of `path`; see the module docstring for formats and errors."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    fmap = parse_field_map(field_map)
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or folder", path=p)
    if p.is_dir():
        rows, unit = _hf_rows(p), "row"
    else:
        fmt, gz = data_format(p)
        raw = _read_bytes(p, gz)
        if not raw.strip():
            raise DataError("the file is empty", path=p)
        rows, unit = _ROW_READERS[fmt](p, raw)
    return _convert(p, rows, unit, fmap, on_error)


# --- turning rows into records -------------------------------------------------------

# (location, row or None, raw text of the row for the rejects file, error when row is None)
_Row = tuple[int, Mapping[str, Any] | None, str, str]


def _convert(
    path: Path, rows: Iterator[_Row], unit: str, fmap: Mapping[str, str], on_error: OnError
) -> ReadResult:
    records: list[Record] = []
    rejects: list[Reject] = []
    schema: Schema | None = None

    def fail(loc: int, reason: str, text: str = "") -> None:
        if on_error == "raise":
            if unit == "line":
                raise DataError(reason, path=path, line=loc)
            raise DataError(reason, path=path, where=f"row {loc}")
        rejects.append(Reject(str(path), loc, reason, text[:2000]))

    for loc, row, info, error in rows:
        if row is None:
            fail(loc, error, info)
            continue
        if schema is None:
            try:
                schema = detect_schema(list(row), row, fmap)
            except MissingFieldError as exc:
                raise DataError(
                    str(exc),
                    path=path,
                    **({"line": loc} if unit == "line" else {"where": f"row {loc}"}),
                ) from None
        try:
            records.append(schema.convert(row))
        except MissingFieldError as exc:
            fail(
                loc,
                f"missing required field {exc}; fields found: "
                f"{', '.join(sorted(row)) or '(none)'}; map fields with --map, "
                "e.g. --map instruction=question,output=answer",
                info,
            )
        except RowError as exc:
            fail(loc, str(exc), info)
    if schema is None:
        if rejects:
            return ReadResult(str(path), records, "unknown", rejects, unit)
        raise DataError("no records found", path=path)
    return ReadResult(str(path), records, schema.name, rejects, unit)


# --- raw rows per format ------------------------------------------------------------


def _read_bytes(path: Path, gz: bool) -> bytes:
    data = path.read_bytes()
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"not a valid gzip file ({exc})", path=path) from None
    return data


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"not valid UTF-8 at byte offset {exc.start} (line {line}): {exc.reason}; "
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            path=path,
        ) from None


def _jsonl_rows(path: Path, raw: bytes) -> tuple[Iterator[_Row], str]:
    text = _decode(path, raw)

    def rows() -> Iterator[_Row]:
        # split on "\n" only: str.splitlines would also break at U+0085/U+2028 inside strings
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, line, f"invalid JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(row, dict):
                yield number, None, line, f"expected a JSON object, got {type(row).__name__}"
                continue
            yield number, row, line, ""

    return rows(), "line"


def _json_rows(path: Path, raw: bytes) -> tuple[Iterator[_Row], str]:
    text = _decode(path, raw)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON ({exc.msg} at column {exc.colno})", path=path, line=exc.lineno
        ) from None
    if isinstance(doc, dict):
        lists = [k for k, v in doc.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                "expected a JSON array of records or an object holding exactly one array; "
                f"found arrays under {lists or 'no key'}",
                path=path,
            )
        doc = doc[lists[0]]
    if not isinstance(doc, list):
        raise DataError(f"expected a JSON array of records, got {type(doc).__name__}", path=path)

    def rows() -> Iterator[_Row]:
        for i, row in enumerate(doc, start=1):
            if isinstance(row, dict):
                yield i, row, "", ""
            else:
                yield (
                    i,
                    None,
                    json.dumps(row)[:2000],
                    f"record {i} is a {type(row).__name__}, not an object",
                )

    return rows(), "row"


def _csv_rows(path: Path, raw: bytes) -> tuple[Iterator[_Row], str]:
    text = _decode(path, raw)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise DataError("the CSV file has no header row", path=path, line=1)

    def rows() -> Iterator[_Row]:
        try:
            for row in reader:
                if None in row:
                    yield reader.line_num, None, "", "more values than header columns"
                    continue
                yield reader.line_num, row, "", ""
        except csv.Error as exc:
            raise DataError(f"malformed CSV ({exc})", path=path, line=reader.line_num) from None

    return rows(), "line"


def _parquet_rows(path: Path, raw: bytes) -> tuple[Iterator[_Row], str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", path=path) from None
    return _table_rows(table), "row"


def _table_rows(table: Any) -> Iterator[_Row]:
    start = 0
    for batch in table.to_batches(max_chunksize=4096):
        for i, row in enumerate(batch.to_pylist()):
            yield start + i + 1, row, "", ""
        start += batch.num_rows


def _hf_rows(folder: Path) -> Iterator[_Row]:
    """Rows of a `datasets.Dataset.save_to_disk` folder, read with pyarrow only."""
    import pyarrow as pa

    if (folder / "dataset_dict.json").exists():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        if len(splits) != 1:
            raise DataError(
                f"a DatasetDict with splits {', '.join(splits)}; pass one split's folder, "
                f"e.g. {folder / (splits[0] if splits else 'train')}",
                path=folder,
            )
        folder = folder / splits[0]
    state = folder / "state.json"
    if not state.exists():
        raise DataError(
            "a folder that is not a saved Hugging Face dataset (no state.json); pass a data "
            "file or a folder written by datasets' save_to_disk",
            path=folder,
        )
    files = [f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
    if not files:
        raise DataError("the saved dataset lists no data files in state.json", path=folder)
    tables = []
    for name in files:
        try:
            with pa.memory_map(str(folder / name)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read arrow file {name} ({exc})", path=folder) from None
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise DataError("the saved dataset has no rows", path=folder)
    return _table_rows(table)


_ROW_READERS = {
    "jsonl": _jsonl_rows,
    "json": _json_rows,
    "csv": _csv_rows,
    "parquet": _parquet_rows,
}
