"""The scoring engine: run indicators over records, cache every score, summarise the results.

Scores are cached by (indicator configuration, record) in a `ScoreCache`
(SQLite, one transaction per batch). Record-level indicators run in fixed
chunks of the input order and each chunk is committed as it finishes, so a run
killed at any point resumes with the first unfinished chunk and computes it
with exactly the same records as an uninterrupted run would: the final output
is identical. Dataset-level indicators run on the whole set in one call; their
scores are keyed by a fingerprint of the set as well. Nothing here is global:
an indicator is rebuilt from `params()` and the cache is a file, so batches can
be scored by independent workers sharing the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import InputError
from instructmining.indicators.base import Indicator
from instructmining.indicators.cache import ScoreCache
from instructmining.indicators.health import HealthFlag, check_health
from instructmining.indicators.registry import create
from instructmining.progress import progress_bar
from instructmining.readers import OnError, read_records
from instructmining.records import Record
from instructmining.writers import check_output, rejects_path, write_json, write_rows

CHUNK = 2048  # records per call and per cache commit for record-level indicators
#: the same for indicators that run a model: a kill loses minutes of work at most
MODEL_CHUNK = 256


def resolve(indicators: Sequence[str | Indicator]) -> list[Indicator]:
    """Indicator objects from names or objects; duplicate names are refused."""
    built = [create(i) if isinstance(i, str) else i for i in indicators]
    names = [i.name for i in built]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"indicators: {', '.join(dupes)} given more than once")
    return built


def record_keys(records: Sequence[Record]) -> list[str]:
    """Cache key of each record: its id plus a hash of its content.

    A record edited under the same id gets a new key, so it is rescored.
    """
    return [
        hashlib.sha256(
            json.dumps([r.id, r.instruction, r.input, r.output], ensure_ascii=False).encode()
        ).hexdigest()[:24]
        for r in records
    ]


def set_fingerprint(keys: Sequence[str]) -> str:
    """Order-independent hash of a multiset of record keys."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:24]


def cache_key(ind: Indicator, keys: Sequence[str]) -> str:
    """The key an indicator's scores of these records are cached under."""
    parts: dict[str, Any] = {"params": ind.key(), "files": ind.fingerprints()}
    if ind.set_dependent():
        parts["set"] = set_fingerprint(keys)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class IndicatorRun:
    """What scoring one indicator did: values computed vs served from the cache, time, truncation."""

    computed: int = 0
    cached: int = 0
    seconds: float = 0.0
    truncated: int = 0
    #: the neighbour search a set-level indicator ran (index, recall, sampled, note), if any
    neighbours: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON summaries)."""
        rate = self.computed / self.seconds if self.computed and self.seconds > 0 else None
        out: dict[str, Any] = {
            "computed": self.computed,
            "cached": self.cached,
            "seconds": round(self.seconds, 4),
            "records_per_s": None if rate is None else round(rate, 1),
            "truncated": self.truncated,
        }
        if self.neighbours is not None:
            out["neighbours"] = dict(self.neighbours)
        return out


def _open_cache(cache: str | Path | ScoreCache | None) -> tuple[ScoreCache | None, bool]:
    if cache is None or isinstance(cache, ScoreCache):
        return cache, False
    return ScoreCache(cache), True


def score(
    records: Sequence[Record],
    indicators: Sequence[str | Indicator] | None = None,
    *,
    profile: str | None = None,
    models: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
    cache: str | Path | ScoreCache | None = None,
    progress: bool = False,
    chunk_size: int = CHUNK,
) -> Any:
    """Score `records`; a DataFrame with `id` and one column per indicator (the `score` command).

    `indicators`: names or objects; default: the `profile`'s set ("offline", or
    "paper"). `models`, `device`, `batch_size`, `max_length`, `dtype` as the
    command's options. `cache`: path of a score store (or a ScoreCache), None for
    no caching. `attrs["indicators"]` holds each indicator's params,
    `attrs["left_out"]` what the profile left out and why, `attrs["runs"]` what
    each indicator computed or took from the cache.
    """
    import pandas as pd

    plan = plan_indicators(
        indicators,
        profile=profile,
        models=models,
        device=device,
        batch_size=batch_size,
        max_length=max_length,
        dtype=dtype,
    )
    built = plan.indicators
    if chunk_size < 1:
        raise ValueError(f"The 'chunk_size' parameter of score must be >= 1. Got {chunk_size}.")
    store, owned = _open_cache(cache)
    n = len(records)
    keys = record_keys(records) if store is not None else []
    columns: dict[str, np.ndarray] = {"id": np.array([r.id for r in records], dtype=object)}
    runs: dict[str, IndicatorRun] = {}
    try:
        for ind in built:  # one bar per indicator: its own rate and ETA
            with progress_bar(n, ind.name, enabled=progress) as bar:
                values, run = _score_one(ind, records, keys, store, chunk_size, bar)
            columns[ind.name] = values
            runs[ind.name] = run
    finally:
        if owned and store is not None:
            store.close()
    frame = pd.DataFrame(columns)
    frame.attrs["indicators"] = {ind.name: ind.params() for ind in built}
    frame.attrs["left_out"] = dict(plan.left_out)
    frame.attrs["runs"] = {name: run.to_dict() for name, run in runs.items()}
    return frame


def _score_one(
    ind: Indicator,
    records: Sequence[Record],
    keys: Sequence[str],
    store: ScoreCache | None,
    chunk_size: int,
    bar: Any,
) -> tuple[np.ndarray, IndicatorRun]:
    n = len(records)
    run = IndicatorRun()
    start_time = time.perf_counter()
    ind.expect(n)  # before the cache key: knn6's search (and key) depends on the set's size
    key = ""
    if store is not None:
        key = cache_key(ind, keys)
        store.register(key, ind.name, {**ind.params(), "fingerprints": ind.fingerprints()})
        found, values, truncated = store.get(key, keys)
    else:
        found = np.zeros(n, dtype=bool)
        values = np.full(n, np.nan)
        truncated = np.zeros(n, dtype=bool)
    run.cached = int(found.sum())
    moved = [0]  # records the indicator reported itself (fine-grained progress)

    def tick(k: int) -> None:
        moved[0] += k
        bar.update(k)

    ind.progress_ = tick
    if ind.set_dependent():
        # the values depend on the whole set: all cached, or all computed in one call
        if n and not found.all():
            values = _check(ind, ind.score(records), n)
            truncated, extra = _truncation(ind, n)
            run.truncated += extra
            run.neighbours = getattr(ind, "neighbours_", None)
            run.computed, run.cached = n, 0
            if store is not None:
                store.put(key, keys, values, truncated)
        bar.update(n - moved[0])
    else:
        if getattr(ind, "backend", "") in ("causal-lm", "transformers", "unieval"):
            chunk_size = min(chunk_size, MODEL_CHUNK)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            todo = np.nonzero(~found[start:stop])[0] + start
            if len(todo):
                part = [records[int(i)] for i in todo]
                got = _check(ind, ind.score(part), len(part))
                flags, extra = _truncation(ind, len(part))
                values[todo] = got
                truncated[todo] = flags
                run.truncated += extra
                run.computed += len(todo)
                if store is not None:  # one transaction per chunk: a kill loses at most this one
                    store.put(key, [keys[int(i)] for i in todo], got, flags)
            bar.update(stop - start - moved[0])
            moved[0] = 0
    ind.progress_ = None
    run.truncated += int(truncated.sum())
    run.seconds = time.perf_counter() - start_time
    return values, run


def _truncation(ind: Indicator, n: int) -> tuple[np.ndarray, int]:
    """(per-record truncation flags, truncations that could not be attributed to a record)."""
    mask = getattr(ind, "truncated_mask_", None)
    if mask is not None:
        arr = np.asarray(mask, dtype=bool)
        if arr.shape == (n,):
            return arr, 0
    count = getattr(ind, "truncated_", 0)
    return np.zeros(n, dtype=bool), int(count or 0)


def _check(ind: Indicator, values: Any, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise RuntimeError(f"indicator {ind.name!r} returned shape {arr.shape}, expected ({n},)")
    return arr


def summarize(frame: Any, columns: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per column: count, NaN count, mean, std, min, quartiles, max."""
    out: dict[str, dict[str, float]] = {}
    for col in columns:
        values = frame[col].to_numpy(dtype=np.float64)
        ok = values[~np.isnan(values)]
        stats: dict[str, float] = {"count": int(ok.size), "nan": int(values.size - ok.size)}
        if ok.size:
            q = np.quantile(ok, [0.0, 0.25, 0.5, 0.75, 1.0])
            stats.update(
                mean=float(ok.mean()),
                std=float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
                min=float(q[0]),
                q25=float(q[1]),
                median=float(q[2]),
                q75=float(q[3]),
                max=float(q[4]),
            )
        out[col] = stats
    return out


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """A fixed-width text table of `summarize` output."""
    keys = ["count", "nan", "mean", "std", "min", "q25", "median", "q75", "max"]
    width = max([len("indicator"), *map(len, summary)])
    lines = ["indicator".ljust(width) + "".join(k.rjust(11) for k in keys)]
    for name, stats in summary.items():
        cells = []
        for k in keys:
            v = stats.get(k)
            cells.append(
                ("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)).rjust(11)
            )
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def rows_for_output(records: Sequence[Record], frame: Any, *, keep_fields: bool) -> Any:
    """The table to write: `id` + indicator columns, after the source fields if kept."""
    if not keep_fields:
        return frame
    import pandas as pd

    clash = sorted(set(frame.columns[1:]) & {k for r in records[:1000] for k in r.fields})
    if clash:
        raise InputError(
            f"the data has fields named like indicator columns ({', '.join(clash)}); "
            "rename them with --map or drop --keep-fields"
        )
    source = pd.DataFrame.from_records([dict(r.fields) for r in records])
    source = source.drop(columns=[c for c in source.columns if c == "id"])
    return pd.concat([frame[["id"]], source, frame.drop(columns=["id"])], axis=1)


@dataclass
class ScoreReport:
    """What `score_file` did: counts, where it wrote, the summary, what was left out and cached."""

    output: Path
    summary_path: Path
    n_records: int
    schema: str
    summary: dict[str, dict[str, float]]
    rejects_path: Path | None = None
    n_rejects: int = 0
    profile: str | None = None
    left_out: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: Path | None = None
    seconds: float = 0.0
    #: per indicator: "backend" or "backend model (dtype)", for the printed summary
    computed_by: dict[str, str] = field(default_factory=dict)
    #: columns that cannot rank records (constant, mostly NaN, few-valued); see `health`
    health: list[HealthFlag] = field(default_factory=list)
    #: the scores written (DataFrame: id + indicator columns) and the records, for reports
    scores: Any = None
    records: list[Record] = field(default_factory=list)
    #: the indicator columns, in order
    columns: list[str] = field(default_factory=list)


def describe_backend(params: Mapping[str, Any]) -> str:
    """How a column was computed, in a few words: backend, model and dtype when it has them."""
    text = str(params.get("backend", ""))
    if params.get("model"):
        text += f" {params['model']}"
        if params.get("dtype"):
            text += f" ({params['dtype']})"
    return text


def plan_indicators(
    indicators: Sequence[str | Indicator] | None = None,
    *,
    profile: str | None = None,
    models: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
) -> Any:
    """The profile's `Plan` (indicators and left-out reasons); explicit objects are kept as given."""
    from instructmining.indicators.profiles import Plan, build

    runtime: dict[str, Any] = {
        "device": device,
        "batch_size": batch_size,
        "max_length": max_length,
        "dtype": dtype,
    }
    if indicators is not None and not all(isinstance(i, str) for i in indicators):
        if models or profile or any(v is not None for v in runtime.values()):
            raise ValueError(
                "indicator objects carry their own settings; pass names to use profile/models"
            )
        return Plan("custom", resolve(indicators))
    names = None if indicators is None else [str(i) for i in indicators]
    if names is not None:
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise ValueError(f"indicators: {', '.join(dupes)} given more than once")
    return build(profile, names=names, models=models, **runtime)


def score_file(
    data: str | Path,
    output: str | Path,
    *,
    indicators: Sequence[str | Indicator] | None = None,
    profile: str | None = None,
    models: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
    cache: str | Path | None = None,
    field_map: str | dict[str, str] | None = None,
    on_error: OnError = "raise",
    keep_fields: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> ScoreReport:
    """Read `data`, score every record, write `output` and `output.summary.json` atomically.

    Indicators: `indicators` (names or objects), else the `profile` ("offline"
    by default, or "paper"); `models` sets checkpoints by indicator name or
    "unieval"; device/batch_size/max_length/dtype go to every indicator taking
    them. `cache`: score store path (None: no cache).
    """
    began = time.perf_counter()
    out = check_output(output, overwrite=overwrite, inputs=[data])
    plan = plan_indicators(
        indicators,
        profile=profile,
        models=models,
        device=device,
        batch_size=batch_size,
        max_length=max_length,
        dtype=dtype,
    )
    built = plan.indicators
    if not built:
        raise InputError("no indicator to compute; see `instructmining indicators`")
    result = read_records(data, field_map=field_map, on_error=on_error)
    frame = score(result.records, built, cache=cache, progress=progress)
    rejects = None
    if result.rejects:
        rejects = rejects_path(out)
        write_rows([r.to_dict() for r in result.rejects], rejects, overwrite=True, inputs=[data])
    write_rows(
        rows_for_output(result.records, frame, keep_fields=keep_fields),
        out,
        overwrite=overwrite,
        inputs=[data],
    )
    cols = [c for ind in built for c in ind.columns]
    summary = summarize(frame, cols)
    health = check_health(frame, cols)
    runs = dict(frame.attrs.get("runs", {}))
    summary_path = write_json(
        {
            "source": str(data),
            "schema": result.schema,
            "records": len(result.records),
            "rejected": len(result.rejects),
            "profile": plan.profile,
            "indicators": {ind.name: ind.params() for ind in built},
            "left_out": plan.left_out,
            "summary": summary,
            "health": [flag.to_dict() for flag in health],
            "runs": runs,
            "cache": None if cache is None else str(cache),
        },
        out.with_name(out.name + ".summary.json"),
    )
    return ScoreReport(
        out,
        summary_path,
        len(result.records),
        result.schema,
        summary,
        rejects,
        len(result.rejects),
        profile=plan.profile,
        left_out=plan.left_out,
        runs=runs,
        cache=None if cache is None else Path(cache),
        seconds=time.perf_counter() - began,
        computed_by={ind.name: describe_backend(ind.params()) for ind in plan.indicators},
        health=health,
        scores=frame,
        records=list(result.records),
        columns=cols,
    )
