"""The study folder: its manifest, pooled source records, D_eval and candidate id lists.

Layout of STUDY_DIR::

    study.json           manifest: sources, D_eval, indicators, settings, every candidate
    pool.jsonl           the pooled source records (after removing D_eval overlap), with `source`
    eval.jsonl           D_eval
    candidates/ID.json   each candidate's record ids, stored once under its content hash
    results.sqlite       the results store (one row per finished or failed candidate)
    scores.sqlite        indicator score cache (the engine's ScoreCache)
    base/                the `tiny` base model, built once per study (tiny-HASH: other settings)
    .lock                held by the command writing to the study (`experiments.lock`)
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

from instructmining.errors import (
    DataError,
    InputError,
    InstructMiningError,
    OutputExistsError,
    ParameterError,
)
from instructmining.experiments.lock import holds_study_lock
from instructmining.records import Record
from instructmining.writers import check_writable, write_json

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
    #: per source, records dropped by --exclude-eval (None when not asked)
    contaminated: dict[str, int] | None = None


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


@dataclass
class _Pool:
    raw_counts: dict[str, int]
    removed: dict[str, int]
    by_source: dict[str, list[Record]]
    origin: dict[str, str]
    duplicates: int
    contaminated: dict[str, int] | None = None

    @property
    def records(self) -> list[Record]:
        return [r for recs in self.by_source.values() for r in recs]


def _build_pool(
    sources: Mapping[str, str | Path],
    source_maps: Mapping[str, str],
    eval_records: Sequence[Record],
    exclude_eval: Sequence[str | Path] = (),
) -> _Pool:
    """Read the sources, drop D_eval overlap, keep one record per id (first source wins).

    With `exclude_eval`, records contaminated by those evaluation files (any kind of
    `selection.contamination` match, default settings) are dropped as well.
    """
    from instructmining.experiments.evalset import remove_overlap
    from instructmining.readers import read_records

    raw = {
        name: read_records(path, field_map=source_maps.get(name) or None).records
        for name, path in sources.items()
    }
    kept, removed = remove_overlap(raw, eval_records)
    contaminated = None
    if exclude_eval:
        kept, contaminated = _exclude_contaminated(kept, exclude_eval)
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
    return _Pool(
        {n: len(r) for n, r in raw.items()}, removed, by_source, origin, duplicates, contaminated
    )


def _exclude_contaminated(
    sources: Mapping[str, list[Record]], eval_paths: Sequence[str | Path]
) -> tuple[dict[str, list[Record]], dict[str, int]]:
    """Drop source records overlapping the eval files (`instructmining check`); counts per source."""
    from instructmining.selection.contamination import find_contamination, read_eval_files

    evalset = read_eval_files(eval_paths, option="--exclude-eval")
    kept: dict[str, list[Record]] = {}
    dropped: dict[str, int] = {}
    for name, recs in sources.items():
        found = set(find_contamination(recs, evalset.records, evalset.origin).contaminated)
        kept[name] = [r for i, r in enumerate(recs) if i not in found]
        dropped[name] = len(found)
    return kept, dropped


def pool_fingerprint(ids: Sequence[str]) -> str:
    """A hash of the pool's record ids (order-free): detects a source that changed."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


@holds_study_lock("study plan", planning=True)
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
    profile: str | None = None,
    source_maps: Mapping[str, str] | None = None,
    bin_sample: int | None = None,
    exclude_eval: Sequence[str | Path] = (),
    models: Mapping[str, str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> PlanReport:
    """Plan a study: read sources and D_eval, drop overlap, draw candidates, write the folder.

    Indicators come from `profile` (default: the default profile), limited to
    `indicators` when given. `source_maps` gives a field map per source name
    (e.g. `transcript=rejected` for the other side of HH-RLHF). Univariate bins
    are cut over the whole pool, or over a seeded random sample of `bin_sample`
    pool records (model-backed indicators on a CPU), candidates drawn from it.
    `exclude_eval` names evaluation files whose overlapping source records (any
    kind `instructmining check` finds) are dropped too. `models` (`--model NAME=CKPT`)
    and `settings` (`--set IND.KEY=VALUE`) configure the indicators; both end up in
    the manifest's stored settings, so every run scores as planned.
    """
    from instructmining.experiments import plan
    from instructmining.experiments.evalset import build_eval_set
    from instructmining.indicators.engine import score
    from instructmining.indicators.profiles import build

    out = Path(out_dir)
    if (out / MANIFEST).exists() and not overwrite:
        raise OutputExistsError(f"{out}: holds a study already; pass --overwrite to replan it")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; give a folder for the study")
    check_writable(out)
    if not sources:
        raise ParameterError("give at least one --source NAME=PATH")
    maps = dict(source_maps or {})
    unknown_maps = sorted(set(maps) - set(sources))
    if unknown_maps:
        raise ParameterError(
            f"--source-map names {', '.join(unknown_maps)}, which are not --source names"
        )
    evalset = build_eval_set(eval_paths)
    built_pool = _build_pool(sources, maps, evalset.records, exclude_eval)
    raw_counts, removed = built_pool.raw_counts, built_pool.removed
    by_source, origin, duplicates = built_pool.by_source, built_pool.origin, built_pool.duplicates
    pool = built_pool.records
    ids_by_source = {name: [r.id for r in recs] for name, recs in by_source.items()}
    available = sum(map(len, ids_by_source.values()))
    if n_mixtures and size > available:
        raise ParameterError(
            f"--size {size} is more than the {available} source records left after removing "
            "D_eval overlap and duplicates; lower --size or add sources"
        )

    own = {k: dict(v) for k, v in (settings or {}).items()}
    profile_plan = build(
        profile, names=list(indicators) if indicators else None, models=models, settings=own
    )
    built = profile_plan.indicators
    by_name = {ind.name: ind for ind in built}
    extra = [n for n in univariate if n not in by_name]
    if extra:  # binned on, not scored for every candidate
        by_name |= {
            i.name: i
            for i in build(
                profile_plan.profile, names=extra, models=models, settings=own
            ).indicators
        }
    unused = sorted(set(own) - set(by_name))
    if unused:
        raise ParameterError(
            f"--set {', '.join(unused)}.*: not among the study's indicators "
            f"({', '.join(by_name)}); add it with --indicators or --univariate"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "candidates").mkdir(exist_ok=True)
    candidates = plan.mixture_candidates(ids_by_source, n=n_mixtures, size=size, seed=seed)
    if univariate:
        binned = pool
        if bin_sample is not None and bin_sample < len(pool):
            import numpy as np

            pick = np.random.default_rng(seed).choice(len(pool), bin_sample, replace=False)
            binned = [pool[int(i)] for i in sorted(pick)]
        frame = score(
            binned,
            [by_name[n] for n in univariate],
            cache=out / "scores.sqlite",
            progress=progress,
        )
        pool_ids = [r.id for r in binned]
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
            "bin_sample": bin_sample,
            "profile": profile_plan.profile,
            "pool_fingerprint": pool_fingerprint(list(origin)),
            "sources": {
                name: {
                    "path": str(sources[name]),
                    "relpath": _relpath(sources[name], out),
                    "field_map": maps.get(name, ""),
                    "read": raw_counts[name],
                    "removed_eval_overlap": removed[name],
                    **(
                        {"removed_eval_contamination": built_pool.contaminated[name]}
                        if built_pool.contaminated is not None
                        else {}
                    ),
                    "kept": len(by_source[name]),
                }
                for name in sources
            },
            "duplicates_dropped": duplicates,
            "eval": {
                "paths": [str(p) for p in eval_paths],
                "relpaths": [_relpath(p, out) for p in eval_paths],
                "parts": evalset.parts,
                "records": len(evalset.records),
            },
            **(
                {
                    "exclude_eval": {
                        "paths": [str(p) for p in exclude_eval],
                        "relpaths": [_relpath(p, out) for p in exclude_eval],
                    }
                }
                if exclude_eval
                else {}
            ),
            "indicators": [ind.params() for ind in built],
            "candidates": entries,
        },
        out / MANIFEST,
    )
    return PlanReport(
        out,
        len(entries),
        len(pool),
        len(evalset.records),
        removed,
        duplicates,
        built_pool.contaminated,
    )


def _relpath(path: str | Path, study: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), study.resolve())


def _locate(entry_path: str, relpath: str | None, study: Path) -> Path:
    """A source file named in the manifest: relative to the study first, else as written."""
    if relpath:
        near = study / relpath
        if near.exists():
            return near
    return Path(entry_path)


class Study:
    """An existing study folder (read-only view; the results store is separate).

    `pool.jsonl` and `eval.jsonl` are rebuilt from the sources named in the
    manifest when they are missing (a study committed without copies of public
    data), and the rebuilt pool must match the planned one's fingerprint.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise InputError(
                f"{self.path}: not a study folder (no {MANIFEST}); create one with "
                "`instructmining study plan ... -o DIR`"
            )

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """The parsed study.json."""
        path = self.path / MANIFEST
        try:
            doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except (ValueError, RecursionError):  # an integer too long to convert, deep nesting
            raise DataError(
                f"{path}: not valid JSON (a number too long or nesting too deep)"
            ) from None
        if not isinstance(doc, dict):
            raise DataError(f"{path}: not a JSON object")
        if doc.get("format") != FORMAT_VERSION:
            raise DataError(
                f"{self.path / MANIFEST}: format {doc.get('format')!r}, this version reads "
                f"{FORMAT_VERSION}; replan the study"
            )
        for key, kind in (("candidates", list), ("indicators", list)):
            if not isinstance(doc.get(key), kind):
                raise DataError(
                    f"{path}: no {key!r} list, so this is not a complete study manifest; "
                    "replan the study (instructmining study plan)"
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
        if not (self.path / "pool.jsonl").exists():
            self._rebuild()
        return {r.id: r for r in _read_records(self.path / "pool.jsonl")}

    @cached_property
    def eval_records(self) -> list[Record]:
        """D_eval."""
        if not (self.path / "eval.jsonl").exists():
            self._rebuild()
        return _read_records(self.path / "eval.jsonl")

    def _rebuild(self) -> None:
        """Write pool.jsonl and eval.jsonl again from the manifest's sources."""
        from instructmining.experiments.evalset import build_eval_set

        doc = self.manifest
        ev = doc["eval"]
        rel = ev.get("relpaths") or [None] * len(ev["paths"])
        try:
            evalset = build_eval_set(
                [_locate(p, r, self.path) for p, r in zip(ev["paths"], rel, strict=True)]
            )
            src = doc["sources"]
            sources = {n: _locate(e["path"], e.get("relpath"), self.path) for n, e in src.items()}
            maps = {n: e.get("field_map", "") for n, e in src.items()}
            ex = doc.get("exclude_eval") or {"paths": []}
            ex_rel = ex.get("relpaths") or [None] * len(ex["paths"])
            excluded = [_locate(p, r, self.path) for p, r in zip(ex["paths"], ex_rel, strict=True)]
            built = _build_pool(sources, maps, evalset.records, excluded)
        except (OSError, InstructMiningError) as exc:
            raise DataError(
                f"{self.path}: pool.jsonl is missing and the sources in {MANIFEST} cannot be "
                f"read to rebuild it ({exc}); put the data back where the manifest says"
            ) from exc
        want = doc.get("pool_fingerprint")
        got = pool_fingerprint(list(built.origin))
        if want and got != want:
            raise DataError(
                f"{self.path}: the sources in {MANIFEST} no longer give the planned pool "
                f"(fingerprint {got}, planned {want}); the data changed: replan the study"
            )
        _write_records(evalset.records, self.path / "eval.jsonl")
        _write_records(built.records, self.path / "pool.jsonl", built.origin)

    def candidate_records(self, candidate_id: str) -> list[Record]:
        """The records of one candidate, in its stored order."""
        ids = json.loads((self.path / "candidates" / f"{candidate_id}.json").read_text())
        pool = self.pool
        missing = [i for i in ids if i not in pool]
        if missing:
            raise DataError(
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
