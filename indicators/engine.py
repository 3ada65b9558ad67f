"""The scoring engine: run indicators over records and summarise the results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import InstructMiningError
from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import create
from instructmining.progress import progress_bar
from instructmining.readers import OnError, read_records
from instructmining.records import Record
from instructmining.writers import check_output, rejects_path, write_json, write_rows

CHUNK = 2048  # records per call for record-level indicators: keeps progress moving


def resolve(indicators: Sequence[str | Indicator]) -> list[Indicator]:
    """Indicator objects from names or objects; duplicate names are refused."""
    built = [create(i) if isinstance(i, str) else i for i in indicators]
    names = [i.name for i in built]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"indicators: {', '.join(dupes)} given more than once")
    return built


def score(
    records: Sequence[Record],
    indicators: Sequence[str | Indicator] = ("input_length", "output_length"),
    *,
    progress: bool = False,
) -> Any:
    """Score `records` with `indicators`; a DataFrame with `id` and one column per output."""
    import pandas as pd

    built = resolve(indicators)
    columns: dict[str, np.ndarray] = {"id": np.array([r.id for r in records], dtype=object)}
    with progress_bar(len(records) * len(built), "scoring", enabled=progress) as bar:
        for ind in built:
            bar.set_postfix_str(ind.name)
            if ind.dataset_level:
                values = _check(ind, ind.score(records), len(records))
                bar.update(len(records))
            else:
                parts = []
                for start in range(0, len(records), CHUNK):
                    chunk = records[start : start + CHUNK]
                    parts.append(_check(ind, ind.score(chunk), len(chunk)))
                    bar.update(len(chunk))
                values = np.concatenate(parts) if parts else np.empty(0)
            columns[ind.name] = values
    return pd.DataFrame(columns)


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
        raise InstructMiningError(
            f"the data has fields named like indicator columns ({', '.join(clash)}); "
            "rename them with --map or drop --keep-fields"
        )
    source = pd.DataFrame.from_records([dict(r.fields) for r in records])
    source = source.drop(columns=[c for c in source.columns if c == "id"])
    return pd.concat([frame[["id"]], source, frame.drop(columns=["id"])], axis=1)


@dataclass
class ScoreReport:
    """What `score_file` did: counts, where it wrote, and the per-indicator summary."""

    output: Path
    summary_path: Path
    n_records: int
    schema: str
    summary: dict[str, dict[str, float]]
    rejects_path: Path | None = None
    n_rejects: int = 0


def score_file(
    data: str | Path,
    output: str | Path,
    *,
    indicators: Sequence[str | Indicator] = ("input_length", "output_length"),
    field_map: str | dict[str, str] | None = None,
    on_error: OnError = "raise",
    keep_fields: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> ScoreReport:
    """Read `data`, score every record, write `output` and `output.summary.json` atomically."""
    out = check_output(output, overwrite=overwrite, inputs=[data])
    built = resolve(indicators)
    result = read_records(data, field_map=field_map, on_error=on_error)
    frame = score(result.records, built, progress=progress)
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
    summary_path = write_json(
        {
            "source": str(data),
            "schema": result.schema,
            "records": len(result.records),
            "rejected": len(result.rejects),
            "indicators": {ind.name: ind.params() for ind in built},
            "summary": summary,
        },
        out.with_name(out.name + ".summary.json"),
    )
    return ScoreReport(
        out, summary_path, len(result.records), result.schema, summary, rejects, len(result.rejects)
    )
