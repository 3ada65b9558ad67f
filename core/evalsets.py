"""Read evaluation sets (D_eval) into records, whatever published layout they come in.

Accepted inputs, recognised by their fields: the Self-Instruct user-oriented
file (`instruction` + `instances[].input/output`: one record per instance), the
Vicuna questions (`question_id, text`) and their answers (`question_id, text`,
with `answer_id` or `model_id`) joined by `question_id`, and any plain record
file that `read_records` understands. The study builds D_eval with it and the
contamination check reads the sets it compares a pool against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructmining.errors import DataError
from instructmining.readers import data_format, read_records
from instructmining.records import Record, make_record


def _json_rows(path: Path) -> list[dict[str, Any]] | None:
    """Rows of a .jsonl/.json file, or None for other formats (read as plain records)."""
    try:
        fmt, gz = data_format(path)
    except DataError:
        return None
    if fmt not in ("jsonl", "json"):
        return None
    raw = path.read_bytes()
    if gz:
        import gzip

        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    if fmt == "json":
        doc = json.loads(text)
        return doc if isinstance(doc, list) and all(isinstance(r, dict) for r in doc) else None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg})", path=path, line=number) from None
        if not isinstance(row, dict):
            return None
        rows.append(row)
    return rows


def _kind(rows: Sequence[Mapping[str, Any]]) -> str:
    first = rows[0] if rows else {}
    if "instances" in first and "instruction" in first:
        return "self-instruct"
    if "question_id" in first and "text" in first:
        return (
            "vicuna-answers"
            if ("answer_id" in first or "model_id" in first)
            else "vicuna-questions"
        )
    return "records"


@dataclass
class EvalSet:
    """D_eval's records and where each came from.

    `parts` maps a source label (the file, or "vicuna" for the joined questions and
    answers) to its count; `origin[i]` is the label of `records[i]`.
    """

    records: list[Record]
    parts: dict[str, int]
    origin: list[str] = field(default_factory=list)


def build_eval_set(paths: Iterable[str | Path], *, answers_required: bool = True) -> EvalSet:
    """Read every path into one D_eval.

    Vicuna questions need their answers among the paths; with `answers_required`
    False (a contamination check, which may compare prompts only) questions
    without answers become records with an empty output.
    """
    records: list[Record] = []
    origin: list[str] = []
    parts: dict[str, int] = {}
    questions: dict[Any, tuple[Path, dict[str, Any]]] = {}
    answers: dict[Any, dict[str, Any]] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise DataError("no such file or folder", path=p)
        rows = (None if p.is_dir() else _json_rows(p)) or []
        kind = _kind(rows) if rows else "records"
        if kind == "self-instruct":
            got = _self_instruct(p, rows)
        elif kind == "vicuna-questions":
            questions.update({r["question_id"]: (p, r) for r in rows})
            continue
        elif kind == "vicuna-answers":
            for r in rows:
                answers.setdefault(r["question_id"], r)  # the first answer of a question wins
            continue
        else:
            got = read_records(p).records
        records.extend(got)
        origin.extend([str(p)] * len(got))
        parts[str(p)] = len(got)
    if questions:
        missing = sorted((q for q in questions if q not in answers), key=str)
        if missing and answers_required:
            path = next(iter(questions.values()))[0]
            raise DataError(
                f"{len(missing)} Vicuna questions have no answer (question_id {missing[:5]}); "
                "pass the answers file (question_id, text) with --eval as well",
                path=path,
            )
        got = [
            make_record(
                str(q["text"]),
                "",
                str(answers[qid]["text"]) if qid in answers else "",
                id=f"vicuna-{qid}",
            )
            for qid, (_, q) in questions.items()
        ]
        records.extend(got)
        origin.extend(["vicuna"] * len(got))
        parts["vicuna"] = len(got)
    elif answers:
        raise DataError(
            "Vicuna answers given without their questions; pass the questions file too",
            path="--eval",
        )
    if not records:
        raise DataError("the evaluation set is empty", path="--eval")
    return EvalSet(records, parts, origin)


def _self_instruct(path: Path, rows: Sequence[Mapping[str, Any]]) -> list[Record]:
    out = []
    for line, row in enumerate(rows, start=1):
        instances = row.get("instances")
        if not isinstance(instances, list) or not instances:
            raise DataError("a Self-Instruct task without instances", path=path, line=line)
        for j, inst in enumerate(instances):
            if not isinstance(inst, dict) or "output" not in inst:
                raise DataError(f"instance {j} has no 'output'", path=path, line=line)
            rid = f"{row.get('id', line)}-{j}" if len(instances) > 1 else str(row.get("id", ""))
            out.append(
                make_record(
                    str(row["instruction"]),
                    str(inst.get("input") or ""),
                    str(inst["output"]),
                    id=rid or None,
                )
            )
    return out
