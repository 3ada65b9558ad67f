"""The Ray engine: one Ray task per candidate, with its own CPU/GPU resources.

The driver scores indicators (through the study's cache), ships each task its
candidate's records, D_eval and the settings, and writes every outcome to the
results store as the task finishes. A base model that lives inside the study
folder (the `tiny` base) travels with the task as bytes, so workers on other
machines need no shared filesystem for it; a real checkpoint must be a hub id or
a path every worker can read. Works against a local Ray instance (no address)
or an existing cluster (`address="ray://host:10001"` or `"auto"`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from instructmining.experiments.study import Study


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray engine needs ray: pip install 'instructmining[ray]'") from exc
    return ray


def _pack_folder(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def run_with_ray(
    study: Study,
    candidates: Sequence[dict[str, Any]],
    settings: Any,
    base: str,
    indicators: Sequence[Any],
    *,
    finish: Callable[[str, dict[str, Any] | None, str | None, float], None],
    address: str | None = None,
    cpus_per_task: float = 1,
    gpus_per_task: float = 0,
) -> None:
    """Submit one task per candidate and record each outcome as it arrives."""
    from dataclasses import replace

    from instructmining.experiments.runner import describe_error, prepare_task, run_task

    ray = _import_ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:  # a private local instance for this run
            ray.init(include_dashboard=False, log_to_driver=False)
    threads = max(1, int(cpus_per_task))
    task_settings = replace(settings, threads=settings.threads or threads)
    remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=0)(run_task)

    base_path = Path(base)
    inside = base_path.exists() and study.path.resolve() in base_path.resolve().parents
    base_arg = ray.put(_pack_folder(base_path)) if inside else base
    eval_ref = ray.put([r.to_dict() for r in study.eval_records])

    pending: dict[Any, tuple[str, dict[str, Any], float]] = {}
    for cand in candidates:
        cid = cand["candidate_id"]
        t0 = time.perf_counter()
        try:
            row, records, save_to = prepare_task(study, cand, settings, indicators)
        except Exception as exc:  # scoring failed: record it, keep going
            finish(cid, None, describe_error(exc), time.perf_counter() - t0)
            continue
        ref = remote.remote(base_arg, records, eval_ref, task_settings, save_to)
        pending[ref] = (cid, row, t0)

    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            cid, row, t0 = pending.pop(ref)
            try:
                out = ray.get(ref)
            except Exception as exc:
                cause = getattr(exc, "cause", None) or exc
                finish(cid, None, describe_error(cause), time.perf_counter() - t0)
                continue
            row = {**row, **out}
            row["wall_s"] = row.pop("task_s") + row.get("score_s", 0.0)
            finish(cid, row, None, row["wall_s"])
