"""Scoring workflows: records or a file in, one value per record and indicator out.

`score` scores records held in memory; `score_file` streams a file: it reads the
records batch by batch for every pass (`execute`), writes the rejects, then
writes the output row by row into a temporary file renamed into place at the
end, with a JSON summary beside it. Peak memory grows with the batch and a few
numbers per record, not with the file, for record-level indicators and for
set-level indicators that run in phases. Planning is in `plan`, execution and
the cache in `execute`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import InputError
from instructmining.indicators.base import Indicator
from instructmining.indicators.cache import ScoreCache
from instructmining.indicators.execute import (
    CHUNK,
    MODEL_CHUNK,
    IndicatorRun,
    ListSource,
    ScoreTable,
    cache_key,
    compute,
    open_cache,
)
from instructmining.indicators.executors import Executor
from instructmining.indicators.health import HealthFlag, check_health
from instructmining.indicators.keys import record_keys, set_fingerprint
from instructmining.indicators.plan import describe_backend, plan_indicators, resolve
from instructmining.readers import OnError, RecordStream, stream_records
from instructmining.records import Record
from instructmining.writers import check_output, open_rows, rejects_path, write_json, write_rows

__all__ = [
    "CHUNK",
    "MODEL_CHUNK",
    "IndicatorRun",
    "ScoreReport",
    "ScoreTable",
    "cache_key",
    "describe_backend",
    "format_summary",
    "plan_indicators",
    "record_keys",
    "resolve",
    "score",
    "score_file",
    "score_records",
    "set_fingerprint",
    "summarize",
]


def score_records(
    records: Sequence[Record],
    indicators: Sequence[str | Indicator] | None = None,
    *,
    profile: str | None = None,
    models: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    cache: str | Path | ScoreCache | None = None,
    progress: bool = False,
    chunk_size: int = CHUNK,
    executor: Executor | None = None,
) -> ScoreTable:
    """Score `records` held in memory; a `ScoreTable` (values, params, runs, left-out).

    `indicators`: names or objects; default: the `profile`'s set. `models`,
    `device`, `batch_size`, `max_length`, `dtype` as the command's options;
    `settings`: one indicator's own settings by name (`--set`). `cache`: path of a score store (or a ScoreCache), None for no caching.
    `executor`: where record batches run (default: this process).
    """
    plan = plan_indicators(
        indicators,
        profile=profile,
        models=models,
        device=device,
        batch_size=batch_size,
        max_length=max_length,
        dtype=dtype,
        settings=settings,
    )
    if chunk_size < 1:
        raise ValueError(f"The 'chunk_size' parameter of score must be >= 1. Got {chunk_size}.")
    table = _compute(ListSource(records, chunk_size), plan, cache, executor, progress, chunk_size)
    return table


def _compute(
    source: Any,
    plan: Any,
    cache: str | Path | ScoreCache | None,
    executor: Executor | None,
    progress: bool,
    chunk_size: int,
) -> ScoreTable:
    """`compute` through a cache opened (and closed) here when given as a path."""
    store, owned = open_cache(cache)
    try:
        table = compute(
            source,
            plan.indicators,
            store=store,
            executor=executor,
            progress=progress,
            chunk_size=chunk_size,
        )
    finally:
        if owned and store is not None:
            store.close()
    table.left_out = dict(plan.left_out)
    return table


def score(records: Sequence[Record], indicators: Any = None, **options: Any) -> Any:
    """`score_records` as a DataFrame: `id` and one column per indicator."""
    return score_records(records, indicators, **options).frame()


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


class _StreamSource:
    """A file's records for `compute`: every pass reads the file again, batch by batch."""

    def __init__(self, stream: RecordStream) -> None:
        self.stream = stream

    def batches(self) -> Any:
        return iter(self.stream)


def _source_fields(stream: RecordStream, columns: Sequence[str]) -> list[str]:
    """Every source field name in first-seen order (one pass), refusing clashes with columns."""
    names: dict[str, None] = {}
    for batch in stream:
        for r in batch:
            names.update(dict.fromkeys(r.fields))
    clash = sorted(set(columns) & set(names))
    if clash:
        raise InputError(
            f"the data has fields named like indicator columns ({', '.join(clash)}); "
            "rename them with --map or drop --keep-fields"
        )
    return [k for k in names if k != "id"]


def _write_scores(
    out: Path,
    table: ScoreTable,
    columns: Sequence[str],
    *,
    stream: RecordStream | None,
    fields: Sequence[str],
    overwrite: bool,
    data: str | Path,
) -> None:
    """Write `id` (+ the source fields) + the columns, batch by batch, atomically."""
    with open_rows(out, overwrite=overwrite, inputs=[data]) as writer:
        if stream is None:
            for start in range(0, len(table), CHUNK):
                stop = start + CHUNK
                block = {c: table.columns[c][start:stop].tolist() for c in columns}
                writer.write(
                    [
                        {"id": rid, **{c: block[c][i] for c in columns}}
                        for i, rid in enumerate(table.ids[start:stop])
                    ]
                )
            return
        pos = 0
        for batch in stream:
            block = {c: table.columns[c][pos : pos + len(batch)].tolist() for c in columns}
            writer.write(
                [
                    {
                        "id": r.id,
                        **{f: r.fields.get(f) for f in fields},
                        **{c: block[c][i] for c in columns},
                    }
                    for i, r in enumerate(batch)
                ]
            )
            pos += len(batch)
        if pos != len(table):
            raise InputError(f"{data}: the input changed while it was being scored")


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
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    cache: str | Path | None = None,
    field_map: str | dict[str, str] | None = None,
    on_error: OnError = "raise",
    keep_fields: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    executor: Executor | None = None,
    keep_records: bool = False,
    chunk_size: int = CHUNK,
) -> ScoreReport:
    """Stream `data`, score every record, write `output` and `output.summary.json` atomically.

    Indicators: `indicators` (names or objects), else the `profile`; `models`
    sets checkpoints by indicator name or "unieval"; device/batch_size/
    max_length/dtype go to every indicator taking them; `settings` gives one
    indicator's own settings (`--set`). `cache`: score store path (None: no
    cache). `executor`: where record batches run (default: this process).
    `keep_records`: keep the records in the report (for a report page; costs
    memory on a large file). `chunk_size`: records per computation and per cache
    commit (at most `MODEL_CHUNK` for model indicators).
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
        settings=settings,
    )
    built = plan.indicators
    if not built:
        raise InputError("no indicator to compute; see `instructmining indicators`")
    cols = [c for ind in built for c in ind.columns]
    stream = stream_records(data, field_map=field_map, on_error=on_error, batch_size=CHUNK)
    fields = _source_fields(stream, cols) if keep_fields else []
    table = _compute(_StreamSource(stream), plan, cache, executor, progress, chunk_size)
    rejects = None
    if stream.rejects:
        rejects = rejects_path(out)
        write_rows([r.to_dict() for r in stream.rejects], rejects, overwrite=True, inputs=[data])
    n_rejects, schema = len(stream.rejects), stream.schema
    _write_scores(
        out,
        table,
        cols,
        stream=stream if keep_fields else None,
        fields=fields,
        overwrite=overwrite,
        data=data,
    )
    frame = table.frame()
    summary = summarize(frame, cols)
    health = check_health(frame, cols)
    runs = table.run_dicts()
    summary_path = write_json(
        {
            "source": str(data),
            "schema": schema,
            "records": len(table),
            "rejected": n_rejects,
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
    records = [r for batch in stream for r in batch] if keep_records else []
    return ScoreReport(
        out,
        summary_path,
        len(table),
        schema,
        summary,
        rejects,
        n_rejects,
        profile=plan.profile,
        left_out=plan.left_out,
        runs=runs,
        cache=None if cache is None else Path(cache),
        seconds=time.perf_counter() - began,
        computed_by={ind.name: describe_backend(ind.params()) for ind in plan.indicators},
        health=health,
        scores=frame,
        records=records,
        columns=cols,
    )
