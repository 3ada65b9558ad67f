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
    out = check_output(path, overwrite=overwrite, inputs=inputs)
    fmt, gz = output_format(out)
    import pandas as pd

    frame = rows if isinstance(rows, pd.DataFrame) else None
    with atomic_path(out) as tmp:
        if fmt == "parquet":
            _write_parquet(frame if frame is not None else rows, tmp)
        else:
            records: Any = frame.to_dict(orient="records") if frame is not None else rows
            with _open_text(tmp, gz) as fh:
                _TEXT_WRITERS[fmt](records, fh)
    return out


def _open_text(path: Path, gz: bool) -> Any:
    if gz:
        return gzip.open(path, "wt", encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")


def _write_parquet(rows: Any, tmp: Path) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = (
        pa.Table.from_pandas(rows, preserve_index=False)
        if isinstance(rows, pd.DataFrame)
        else pa.Table.from_pylist(list(rows))
    )
    pq.write_table(table, tmp)


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


def _jsonl(records: Iterable[Mapping[str, Any]], fh: Any) -> None:
    for row in records:
        fh.write(
            json.dumps(
                {k: _clean(v) for k, v in row.items()}, ensure_ascii=False, default=_json_default
            )
        )
        fh.write("\n")


def _json(records: Iterable[Mapping[str, Any]], fh: Any) -> None:
    json.dump(
        [{k: _clean(v) for k, v in row.items()} for row in records],
        fh,
        ensure_ascii=False,
        indent=1,
        default=_json_default,
    )
    fh.write("\n")


def _csv(records: Iterable[Mapping[str, Any]], fh: Any) -> None:
    import csv

    rows = list(records)
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row))
    writer = csv.DictWriter(fh, fieldnames=list(header))
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: json.dumps(v, ensure_ascii=False, default=_json_default)
                if isinstance(v, (list, dict))
                else v
                for k, v in row.items()
            }
        )


_TEXT_WRITERS = {"jsonl": _jsonl, "json": _json, "csv": _csv}


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
