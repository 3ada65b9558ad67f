"""Tasks: an instruction with its instances, read from Self-Instruct seed files or plain records."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructmining.errors import DataError


@dataclass(frozen=True)
class Task:
    """An instruction and its (input, output) instances; `is_classification` None when unknown."""

    instruction: str
    instances: tuple[tuple[str, str], ...] = ()
    is_classification: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_nested(self) -> dict[str, Any]:
        """The Self-Instruct seed layout: instruction, instances [{input, output}], is_classification."""
        return {
            "instruction": self.instruction,
            "instances": [{"input": i, "output": o} for i, o in self.instances],
            "is_classification": self.is_classification,
            **self.extra,
        }

    def to_rows(self, **fields: Any) -> list[dict[str, Any]]:
        """One Alpaca-layout row per instance (instruction, input, output, is_classification, ...)."""
        return [
            {
                "instruction": self.instruction,
                "input": i,
                "output": o,
                "is_classification": self.is_classification,
                **fields,
            }
            for i, o in self.instances
        ]


def task_from_nested(row: Mapping[str, Any], *, path: str | Path, line: int) -> Task:
    """A Task from one Self-Instruct style row; DataError naming the file and line otherwise."""
    instruction = row.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError("field 'instruction' is missing or empty", path=path, line=line)
    raw = row.get("instances") or []
    if not isinstance(raw, list):
        raise DataError("field 'instances' must be a list of {input, output}", path=path, line=line)
    pairs = []
    for inst in raw:
        if not isinstance(inst, Mapping) or not isinstance(inst.get("output", ""), str):
            raise DataError(
                "each instance must be an object with 'input' and 'output' strings",
                path=path,
                line=line,
            )
        pairs.append((str(inst.get("input") or ""), str(inst.get("output") or "")))
    clf = row.get("is_classification")
    extra = {
        k: v for k, v in row.items() if k not in ("instruction", "instances", "is_classification")
    }
    return Task(instruction.strip(), tuple(pairs), None if clf is None else bool(clf), extra)


def _nested_rows(path: Path) -> list[tuple[int, Mapping[str, Any]]] | None:
    """The rows of a JSON/JSONL file when they are in the nested task layout, else None."""
    name = path.name.lower().removesuffix(".gz")
    if not name.endswith((".jsonl", ".ndjson", ".json")):
        return None
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read: {exc}", path=path) from exc
    rows: list[tuple[int, Any]] = []
    if name.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None  # the general reader reports the error with its position
        if not isinstance(data, list):
            return None
        rows = list(enumerate(data, start=1))
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError:
                    return None
    if rows and isinstance(rows[0][1], Mapping) and "instances" in rows[0][1]:
        return rows
    return None


def read_tasks(path: str | Path, *, field_map: str | Mapping[str, str] | None = None) -> list[Task]:
    """Tasks from a Self-Instruct seed file (nested instances) or any file of records.

    A plain record (Alpaca, Dolly, chat, ... see `instructmining.readers`) becomes a
    task with one instance; records sharing an instruction are merged into one task.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or folder", path=p)
    nested = None if field_map else (_nested_rows(p) if p.is_file() else None)
    if nested is not None:
        tasks = []
        for line, row in nested:
            if not isinstance(row, Mapping):
                raise DataError("expected a JSON object", path=p, line=line)
            tasks.append(task_from_nested(row, path=p, line=line))
        return tasks
    from instructmining.readers import read_records

    merged: dict[str, list[tuple[str, str]]] = {}
    clf: dict[str, bool | None] = {}
    for rec in read_records(p, field_map=field_map).records:
        merged.setdefault(rec.instruction.strip(), []).append((rec.input, rec.output))
        flag = rec.fields.get("is_classification")
        clf.setdefault(rec.instruction.strip(), None if flag is None else bool(flag))
    return [Task(k, tuple(v), clf[k]) for k, v in merged.items() if k]


def instructions(tasks: Iterable[Task]) -> list[str]:
    """The instruction texts of `tasks`, in order."""
    return [t.instruction for t in tasks]
