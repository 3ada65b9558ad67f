"""Read instruction data from JSONL, JSON, CSV, Parquet (each optionally gzipped) or a
Hugging Face `datasets` folder written by ``save_to_disk``.

`stream_records` yields the records in batches, reading JSONL, CSV and Parquet
incrementally so that a large pool never sits in memory whole; `read_records`
collects every batch. Every problem is reported as a DataError naming the file
and the line (or row) it was found at. With ``on_error="skip"`` a bad row is set
aside as a Reject and reading goes on; the caller decides where the rejects are
written.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
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
_LOCATION = {"jsonl": "line", "csv": "line", "json": "row", "parquet": "row"}


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
    stream = stream_records(path, field_map=field_map, on_error=on_error, batch_size=4096)
    records = [record for batch in stream for record in batch]
    return ReadResult(stream.path, records, stream.schema, stream.rejects, stream.location)


def stream_records(
    path: str | Path,
    *,
    field_map: str | Mapping[str, str] | None = None,
    on_error: OnError = "raise",
    batch_size: int = 2048,
) -> RecordStream:
    """The records of `path` as an iterable of batches of at most `batch_size` records.

    The arguments, the path and its type are checked now; the file is read while
    iterating, and a bad row raises (or is set aside) when its batch is reached.
    JSON documents and saved datasets are loaded whole, as by `read_records` (a JSON
    array cannot be read piecewise without a streaming parser); use JSONL for large pools.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    fmap = parse_field_map(field_map)
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or folder", path=p)
    fmt, gz = (None, False) if p.is_dir() else data_format(p)
    return RecordStream(p, fmt, gz, fmap, on_error, batch_size)


class RecordStream:
    """Batches of records from one source (see `stream_records`), read as they are asked for.

    The attributes describe what was read so far: `schema` is "unknown" until the
    first good row, `rejects` holds the rows skipped (with ``on_error="skip"``) and
    `n_records` counts the records yielded; `location` says what the numbers in
    rejects count ("line" or "row"). Iterating again reads the source again from the
    start and resets them.
    """

    def __init__(
        self,
        path: Path,
        fmt: str | None,
        gz: bool,
        fmap: Mapping[str, str],
        on_error: OnError,
        batch_size: int,
    ) -> None:
        self.path = str(path)
        self.location = _LOCATION[fmt] if fmt else "row"  # None: a save_to_disk folder
        self.schema = "unknown"
        self.rejects: list[Reject] = []
        self.n_records = 0
        self.batch_size = batch_size
        self._path, self._fmt, self._gz = path, fmt, gz
        self._fmap, self._on_error = fmap, on_error

    def __iter__(self) -> Iterator[list[Record]]:
        self.schema, self.rejects, self.n_records = "unknown", [], 0
        batch: list[Record] = []
        for record in self._convert(self._rows()):
            batch.append(record)
            if len(batch) == self.batch_size:
                self.n_records += len(batch)
                yield batch
                batch = []
        if batch:
            self.n_records += len(batch)
            yield batch

    def _rows(self) -> Iterator[_Row]:
        if self._fmt is None:
            return _hf_rows(self._path)
        if not _has_content(self._path, self._gz):
            raise DataError("the file is empty", path=self._path)
        return _ROW_READERS[self._fmt](self._path, self._gz, self.batch_size)

    def _convert(self, rows: Iterator[_Row]) -> Iterator[Record]:
        """Records from raw rows; the schema is detected from the first good row."""
        path, unit = self._path, self.location
        schema: Schema | None = None

        def fail(loc: int, reason: str, text: str = "") -> None:
            if self._on_error == "raise":
                if unit == "line":
                    raise DataError(reason, path=path, line=loc)
                raise DataError(reason, path=path, where=f"row {loc}")
            self.rejects.append(Reject(str(path), loc, reason, text[:2000]))

        for loc, row, info, error in rows:
            if row is None:
                fail(loc, error, info)
                continue
            if schema is None:
                try:
                    schema = detect_schema(list(row), row, self._fmap)
                except MissingFieldError as exc:
                    raise DataError(
                        str(exc),
                        path=path,
                        **({"line": loc} if unit == "line" else {"where": f"row {loc}"}),
                    ) from None
                self.schema = schema.name
            try:
                record = schema.convert(row)
            except MissingFieldError as exc:
                fail(
                    loc,
                    f"missing required field {exc}; fields found: "
                    f"{', '.join(sorted(row)) or '(none)'}; map fields with --map, "
                    "e.g. --map instruction=question,output=answer",
                    info,
                )
                continue
            except RowError as exc:
                fail(loc, str(exc), info)
                continue
            yield record
        if schema is None and not self.rejects:
            raise DataError("no records found", path=path)


# --- raw rows per format ------------------------------------------------------------

# (location, row or None, raw text of the row for the rejects file, error when row is None)
_Row = tuple[int, Mapping[str, Any] | None, str, str]


def _open_binary(path: Path, gz: bool) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if gz else open(path, "rb")


@contextlib.contextmanager
def _gzip_errors(path: Path, gz: bool) -> Iterator[None]:
    """Report a corrupt or truncated gzip stream as a DataError naming the file."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        if not gz:
            raise
        raise DataError(f"not a valid gzip file ({exc})", path=path) from None


def _has_content(path: Path, gz: bool) -> bool:
    """Whether the file holds anything but whitespace; reads only up to the first content."""
    with _open_binary(path, gz) as fh, _gzip_errors(path, gz):
        while chunk := fh.read(1 << 20):
            if chunk.strip():
                return True
    return False


def _read_bytes(path: Path, gz: bool) -> bytes:
    with _open_binary(path, gz) as fh, _gzip_errors(path, gz):
        return fh.read()


def _utf8_error(path: Path, offset: int, line: int, exc: UnicodeDecodeError) -> DataError:
    return DataError(
        f"not valid UTF-8 at byte offset {offset} (line {line}): {exc.reason}; "
        "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        path=path,
    )


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
        line = raw.count(b"\n", 0, bom + exc.start) + 1
        raise _utf8_error(path, bom + exc.start, line, exc) from None


def _lines(path: Path, gz: bool) -> Iterator[tuple[int, str]]:
    """(number, text) of each line, "\\n" kept, a leading BOM dropped.

    Split in binary on b"\\n" only: str.splitlines would also break at U+0085/U+2028
    inside strings. Byte offsets in errors count from the start of the (unzipped) file.
    """
    offset = 0
    with _open_binary(path, gz) as fh, _gzip_errors(path, gz):
        for number, raw in enumerate(fh, start=1):
            skip = len(codecs.BOM_UTF8) if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            try:
                text = raw[skip:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _utf8_error(path, offset + skip + exc.start, number, exc) from None
            offset += len(raw)
            yield number, text


def _jsonl_rows(path: Path, gz: bool, batch_size: int) -> Iterator[_Row]:
    for number, text in _lines(path, gz):
        line = text[:-1] if text.endswith("\n") else text
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


def _json_rows(path: Path, gz: bool, batch_size: int) -> Iterator[_Row]:
    text = _decode(path, _read_bytes(path, gz))
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON ({exc.msg} at column {exc.colno})", path=path, line=exc.lineno
        ) from None
    del text
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


# a lone "\r" ends a line too, as when the whole text was read with newline=""
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def _csv_lines(path: Path, gz: bool) -> Iterator[str]:
    for _, text in _lines(path, gz):
        if "\r" in text:
            yield from (part for part in _LONE_CR.split(text) if part)
        else:
            yield text


def _csv_rows(path: Path, gz: bool, batch_size: int) -> Iterator[_Row]:
    reader = csv.DictReader(_csv_lines(path, gz))
    try:
        if not reader.fieldnames:
            raise DataError("the CSV file has no header row", path=path, line=1)
        for row in reader:
            if None in row:
                yield reader.line_num, None, "", "more values than header columns"
                continue
            yield reader.line_num, row, "", ""
    except csv.Error as exc:
        raise DataError(f"malformed CSV ({exc})", path=path, line=reader.line_num) from None


def _parquet_rows(path: Path, gz: bool, batch_size: int) -> Iterator[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = 0
    try:
        with pq.ParquetFile(path) as source:
            for batch in source.iter_batches(batch_size=batch_size):
                for i, row in enumerate(batch.to_pylist()):
                    yield start + i + 1, row, "", ""
                start += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", path=path) from None


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


_ROW_READERS: dict[str, Callable[[Path, bool, int], Iterator[_Row]]] = {
    "jsonl": _jsonl_rows,
    "json": _json_rows,
    "csv": _csv_rows,
    "parquet": _parquet_rows,
}
