"""Write tables and records atomically: a temporary file beside the target, then a rename.

An interrupted write never leaves a half-written output, an input file is never
overwritten, and an existing output is replaced only when asked.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from instructmining.errors import InputError, OutputExistsError, OutputNotWritableError

WRITE_FORMATS = ("jsonl", "json", "csv", "parquet")


def output_format(path: str | Path) -> tuple[str, bool]:
    """(format, gzipped) of an output path; refuses unsupported extensions."""
    name = Path(path).name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for fmt in WRITE_FORMATS:
        if name.endswith("." + fmt):
            if gz and fmt == "parquet":
                break
            return fmt, gz
    raise InputError(
        f"{path}: cannot write this file type; use .jsonl, .json, .csv (optionally .gz) or .parquet"
    )


def check_output(
    path: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()
) -> Path:
    """Fail early, before any work, if `path` may not be written."""
    out = Path(path)
    output_format(out)
    for source in inputs:
        src = Path(source)
        if src.exists() and out.exists() and os.path.samefile(src, out):
            raise InputError(f"{out}: refusing to overwrite an input file; choose another output")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists already; pass --overwrite to replace it")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name")
    if not out.parent.exists():
        raise InputError(f"{out.parent}: the output folder does not exist")
    check_writable(out.parent, out)
    return out


def check_writable(folder: str | Path, output: str | Path | None = None) -> Path:
    """Fail early, before any work, if no file can be created in `folder`.

    A folder that does not exist yet counts by its nearest existing parent (it
    would be created there). Tried with a real temporary file: permission bits
    say nothing about read-only mounts, /proc or a process running as root.
    """
    where = Path(folder)
    while not where.exists() and where.parent != where:
        where = where.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=".instructmining-", suffix=".tmp", dir=where)
    except OSError as exc:
        name = output if output is not None else folder
        raise OutputNotWritableError(
            f"{name}: cannot write in {where} ({exc.strerror or exc}); "
            "choose an output in a folder you can write to"
        ) from None
    os.close(fd)
    os.unlink(tmp)
    return where


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_rows(
    rows: Sequence[Mapping[str, Any]] | Any,
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Write rows (a sequence of mappings or a pandas DataFrame) to `path` atomically."""
    with open_rows(path, overwrite=overwrite, inputs=inputs) as writer:
        writer.write(rows)
    return writer.path


@contextlib.contextmanager
def open_rows(
    path: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()
) -> Iterator[RowWriter]:
    """A RowWriter for `path`, to write rows in batches without holding them all.

    `path` is checked as by `write_rows` before anything is written; the rows go to
    a temporary file beside it, renamed onto `path` only when the block ends without
    an exception (otherwise the temporary file is removed and `path` left as it was).
    """
    out = check_output(path, overwrite=overwrite, inputs=inputs)
    with atomic_path(out) as tmp:
        writer = RowWriter(out, tmp)
        try:
            yield writer
            writer._finish()
        except BaseException:
            writer._abort()
            raise


class RowWriter:
    """Writes batches of rows to the temporary file of an output opened by `open_rows`.

    JSONL and JSON files are the same whether the rows come in one batch or many. CSV
    takes its header from the first non-empty batch (the keys of its rows, in first-seen
    order) and Parquet its schema (later batches are cast to it): neither can change
    afterwards, so a later column it lacks is an InputError naming the column.
    """

    def __init__(self, path: Path, tmp: Path) -> None:
        self.path = path
        self.n_rows = 0
        self._tmp = tmp
        self._fmt, gz = output_format(path)
        self._fh: Any = None if self._fmt == "parquet" else _open_text(tmp, gz)
        self._csv: Any = None  # csv.DictWriter, made at the first row
        self._parquet: Any = None  # pyarrow.parquet.ParquetWriter, made at the first batch
        self._schema: Any = None
        self._open = True

    def write(self, rows: Iterable[Mapping[str, Any]] | Any) -> None:
        """Append rows: mappings (values may be numpy scalars, NaN, lists, dicts) or a DataFrame."""
        if not self._open:
            raise ValueError(f"{self.path}: the output is closed")
        import pandas as pd

        frame = rows if isinstance(rows, pd.DataFrame) else None
        if self._fmt == "parquet":
            self._write_parquet(frame if frame is not None else list(rows))
            return
        records: Any = frame.to_dict(orient="records") if frame is not None else rows
        if self._fmt == "jsonl":
            for row in records:
                self._fh.write(_dumps(row))
                self._fh.write("\n")
                self.n_rows += 1
        elif self._fmt == "json":
            for row in records:
                # json.dump(rows, indent=1) would put each object one level deeper
                self._fh.write(",\n " if self.n_rows else "[\n ")
                self._fh.write(_dumps(row, indent=1).replace("\n", "\n "))
                self.n_rows += 1
        else:
            self._write_csv(list(records))

    def _write_csv(self, rows: list[Mapping[str, Any]]) -> None:
        import csv

        if not rows:
            return
        if self._csv is None:
            header: dict[str, None] = {}
            for row in rows:
                header.update(dict.fromkeys(row))
            self._csv = csv.DictWriter(self._fh, fieldnames=list(header))
            self._csv.writeheader()
        known = set(self._csv.fieldnames)
        for row in rows:
            for key in row:
                if key not in known:
                    raise InputError(
                        f"{self.path}: column {key!r} is not in the CSV header "
                        f"({', '.join(self._csv.fieldnames)}), which the first batch of rows set"
                    )
        for row in rows:
            self._csv.writerow(
                {
                    k: json.dumps(v, ensure_ascii=False, default=_json_default)
                    if isinstance(v, (list, dict))
                    else v
                    for k, v in row.items()
                }
            )
            self.n_rows += 1

    def _write_parquet(self, rows: Any) -> None:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is not None:
            table = self._conform(rows)
        else:
            table = (
                pa.Table.from_pandas(rows, preserve_index=False)
                if isinstance(rows, pd.DataFrame)
                else pa.Table.from_pylist(rows)
            )
            if table.num_columns == 0 and table.num_rows == 0:
                return
            self._schema = table.schema
            self._parquet = pq.ParquetWriter(self._tmp, self._schema)
        self._parquet.write_table(table)
        self.n_rows += table.num_rows

    def _conform(self, rows: Any) -> Any:
        """A later batch as a table of the first batch's schema; absent columns are null."""
        import pandas as pd
        import pyarrow as pa

        schema = self._schema
        frame = (
            pa.Table.from_pandas(rows, preserve_index=False)
            if isinstance(rows, pd.DataFrame)
            else None
        )
        names = (
            frame.column_names
            if frame is not None
            else dict.fromkeys(k for row in rows for k in row)
        )
        for name in names:
            if name not in schema.names:
                raise InputError(
                    f"{self.path}: column {name!r} is not in the Parquet schema "
                    f"({', '.join(schema.names)}), which the first batch of rows set"
                )
        columns = []
        for column in schema:
            try:
                if frame is None:
                    values = [row.get(column.name) for row in rows]
                    columns.append(pa.array(values, type=column.type))
                elif column.name in names:
                    columns.append(frame.column(column.name).cast(column.type))
                else:
                    columns.append(pa.nulls(frame.num_rows, column.type))
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise InputError(
                    f"{self.path}: column {column.name!r} cannot be written as {column.type}, "
                    f"its type in the first batch of rows ({exc})"
                ) from None
        return pa.Table.from_arrays(columns, schema=schema)

    def _finish(self) -> None:
        """Complete the file: the end of a JSON array, a CSV header, the Parquet footer."""
        if self._fmt == "parquet" and self._parquet is None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({}), self._tmp)  # no rows: a valid file with no columns
        elif self._fmt == "json":
            self._fh.write("\n]\n" if self.n_rows else "[]\n")
        elif self._fmt == "csv" and self._csv is None:
            import csv

            csv.DictWriter(self._fh, fieldnames=[]).writeheader()  # as write_rows([]) did
        self._close()

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close()

    def _close(self) -> None:
        self._open = False
        for handle in (self._parquet, self._fh):
            if handle is not None:
                handle.close()


def _open_text(path: Path, gz: bool) -> Any:
    if gz:
        return gzip.open(path, "wt", encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def _dumps(row: Mapping[str, Any], indent: int | None = None) -> str:
    return json.dumps(
        {k: _clean(v) for k, v in row.items()},
        ensure_ascii=False,
        indent=indent,
        default=_json_default,
    )


def rejects_path(output: str | Path) -> Path:
    """Where the rows skipped while producing `output` are written."""
    out = Path(output)
    return out.with_name(out.name + ".rejects.jsonl")


def write_json(obj: Any, path: str | Path) -> Path:
    """Write one JSON document atomically (summaries, manifests, rules)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(
            json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n",
            encoding="utf-8",
        )
    return target
