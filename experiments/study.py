"""The study folder: its manifest, pooled source records, D_eval and candidate id lists.

Layout of STUDY_DIR::

    study.json           manifest: sources, D_eval, indicators, settings, every candidate
    pool.jsonl           the pooled source records (after removing D_eval overlap), with `source`
    eval.jsonl           D_eval
    candidates/ID.json   each candidate's record ids, stored once under its content hash
    results.sqlite       the results store (one row per finished or failed candidate)
    scores.sqlite        indicator score cache (the engine's ScoreCache)
    base/                the `tiny` base model, built once per study
    runs/ID/             finetuned weights, only with --keep-weights
    fit/                 `study fit` output: rule.json and the report
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from instructmining.errors import InstructMiningError
from instructmining.records import Record
from instructmining.writers import write_json

MANIFEST = "study.json"
FORMAT_VERSION = 1


@dataclass
class PlanReport:
    """What `create_study` did: counts to show the user."""

    path: Path
    n_candidates: int
    pool_size: int
    eval_size: int
    removed_overlap: dict[str, int]
    duplicates: int


def _write_records(
    records: Sequence[Record], path: Path, extra: Mapping[str, str] | None = None
) -> None:
    from instructmining.writers import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            row = r.to_dict()
            if extra is not None:
                row["source"] = extra[r.id]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_records(path: Path) -> list[Record]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out.append(Record(row["instruction"], row["input"], row["output"], row["id"], row))
    return out


def create_study(
    out_dir: str | Path,
    *,
    sources: Mapping[str, str | Path],
    eval_paths: Sequence[str | Path],
    n_mixtures: int = 40,
    size: int = 1000,
    univariate: Sequence[str] = (),
    bins: int = 8,
    seed: int = 0,
    indicators: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> PlanReport:
    """Plan a study: read sources and D_eval, drop overlap, draw candidates, write the folder."""
    from instructmining.experiments import plan
    from instructmining.experiments.evalset import build_eval_set, remove_overlap
    from instructmining.indicators.engine import score
    from instructmining.indicators.profiles import OFFLINE_INDICATORS
    from instructmining.indicators.registry import from_params
    from instructmining.readers import read_records

    out = Path(out_dir)
    if (out / MANIFEST).exists() and not overwrite:
        raise InstructMiningError(f"{out}: holds a study already; pass --overwrite to replan it")
    if out.exists() and not out.is_dir():
        raise InstructMiningError(f"{out}: is a file; give a folder for the study")
    if not sources:
        raise InstructMiningError("give at least one --source NAME=PATH")
    evalset = build_eval_set(eval_paths)
    raw = {name: read_records(path).records for name, path in sources.items()}
    kept, removed = remove_overlap(raw, evalset.records)
    # one record per id across sources (the first source named wins)
    origin: dict[str, str] = {}
    by_source: dict[str, list[Record]] = {}
    duplicates = 0
    for name, recs in kept.items():
        mine = []
        for r in recs:
            if r.id in origin:
                duplicates += 1
                continue
            origin[r.id] = name
            mine.append(r)
        by_source[name] = mine
    pool = [r for recs in by_source.values() for r in recs]
    ids_by_source = {name: [r.id for r in recs] for name, recs in by_source.items()}
    available = sum(map(len, ids_by_source.values()))
    if n_mixtures and size > available:
        raise InstructMiningError(
            f"--size {size} is more than the {available} source records left after removing "
            "D_eval overlap and duplicates; lower --size or add sources"
        )

    names = list(indicators) if indicators else list(OFFLINE_INDICATORS)
    built = [from_params(n) for n in names]
    out.mkdir(parents=True, exist_ok=True)
    (out / "candidates").mkdir(exist_ok=True)
    candidates = plan.mixture_candidates(ids_by_source, n=n_mixtures, size=size, seed=seed)
    if univariate:
        by_name = {ind.name: ind for ind in built}
        extra = [n for n in univariate if n not in by_name]
        uni = by_name | {ind.name: ind for ind in map(from_params, extra)}
        frame = score(
            pool, [uni[n] for n in univariate], cache=out / "scores.sqlite", progress=progress
        )
        pool_ids = [r.id for r in pool]
        for name in univariate:
            candidates += plan.univariate_candidates(
                pool_ids, frame[name].to_numpy(), indicator=name, bins=bins, size=size, seed=seed
            )

    entries = []
    seen: set[str] = set()
    for c in candidates:
        cid = c.candidate_id
        if cid in seen:  # two draws gave the same set: one candidate
            continue
        seen.add(cid)
        ids_file = out / "candidates" / f"{cid}.json"
        if not ids_file.exists():
            write_json(list(c.record_ids), ids_file)
        entries.append(
            {"candidate_id": cid, "kind": c.kind, "n_records": len(c.record_ids), **c.info}
        )

    _write_records(pool, out / "pool.jsonl", origin)
    _write_records(evalset.records, out / "eval.jsonl")
    write_json(
        {
            "format": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seed": seed,
            "size": size,
            "n_mixtures": n_mixtures,
            "univariate": list(univariate),
            "bins": bins,
            "sources": {
                name: {
                    "path": str(sources[name]),
                    "read": len(raw[name]),
                    "removed_eval_overlap": removed[name],
                    "kept": len(by_source[name]),
                }
                for name in sources
            },
            "duplicates_dropped": duplicates,
            "eval": {
                "paths": [str(p) for p in eval_paths],
                "parts": evalset.parts,
                "records": len(evalset.records),
            },
            "indicators": [ind.params() for ind in built],
            "candidates": entries,
        },
        out / MANIFEST,
    )
    return PlanReport(out, len(entries), len(pool), len(evalset.records), removed, duplicates)


class Study:
    """An existing study folder (read-only view; the results store is separate)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise InstructMiningError(
                f"{self.path}: not a study folder (no {MANIFEST}); create one with "
                "`instructmining study plan ... -o DIR`"
            )

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """The parsed study.json."""
        doc: dict[str, Any] = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT_VERSION:
            raise InstructMiningError(
                f"{self.path / MANIFEST}: format {doc.get('format')!r}, this version reads "
                f"{FORMAT_VERSION}; replan the study"
            )
        return doc

    @property
    def candidates(self) -> list[dict[str, Any]]:
        """Manifest entries, one per candidate, in plan order."""
        return list(self.manifest["candidates"])

    @property
    def indicator_params(self) -> list[dict[str, Any]]:
        """params() of the study's indicators."""
        return list(self.manifest["indicators"])

    @cached_property
    def pool(self) -> dict[str, Record]:
        """Pooled source records by id."""
        return {r.id: r for r in _read_records(self.path / "pool.jsonl")}

    @cached_property
    def eval_records(self) -> list[Record]:
        """D_eval."""
        return _read_records(self.path / "eval.jsonl")

    def candidate_records(self, candidate_id: str) -> list[Record]:
        """The records of one candidate, in its stored order."""
        ids = json.loads((self.path / "candidates" / f"{candidate_id}.json").read_text())
        pool = self.pool
        missing = [i for i in ids if i not in pool]
        if missing:
            raise InstructMiningError(
                f"{self.path}: candidate {candidate_id} names {len(missing)} records not in "
                "pool.jsonl; the study folder is damaged, replan it"
            )
        return [pool[i] for i in ids]

    @property
    def cache_dir(self) -> Path:
        """Indicator score cache."""
        return self.path / "scores.sqlite"

    @property
    def results_path(self) -> Path:
        """The results store."""
        return self.path / "results.sqlite"
