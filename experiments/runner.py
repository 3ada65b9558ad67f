"""Run a study: for each unfinished candidate, score, finetune, evaluate, record.

The local engine runs candidates one after another in this process; the Ray
engine (`ray_engine`) runs the same `train_and_evaluate` as one task per
candidate. Either way the driver scores indicators (through the study's cache)
and writes every outcome to the results store as soon as it is known, so a
study killed at any point continues at the next unfinished candidate.
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from instructmining.errors import (
    CorruptFileError,
    InstructMiningError,
    MissingPackageError,
    ParameterError,
)
from instructmining.experiments.defaults import REAL_DEFAULTS, TINY_DEFAULTS
from instructmining.experiments.finetune import TrainConfig
from instructmining.experiments.lock import holds_study_lock
from instructmining.experiments.study import Study
from instructmining.experiments.tiny_base import TinyBaseConfig
from instructmining.records import Record

TINY = "tiny"
TINY_TRAIN = TrainConfig(**TINY_DEFAULTS)
REAL_TRAIN = TrainConfig(**REAL_DEFAULTS)


@dataclass(frozen=True)
class RunSettings:
    """How every candidate of a run is finetuned and evaluated."""

    base_model: str = TINY
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_batch_size: int = 16
    device: str = "auto"
    #: torch CPU threads per candidate; None: 1 for the tiny base (its small matrices
    #: gain little from more threads and lose much when the cores are shared), else all
    threads: int | None = None
    keep_weights: bool = False
    #: size and pretraining of the `tiny` base (None: TinyBaseConfig defaults)
    tiny: TinyBaseConfig | None = None

    def config_key(self) -> str:
        """The results store's configuration: base model and training settings, hashed."""
        import hashlib
        import json

        blob = json.dumps(
            {
                "base": self.base_model,
                "train": self.train.key(),
                "tiny": asdict(self.tiny) if self.tiny else None,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def cpu_threads(self) -> int:
        """The torch thread count this run uses."""
        if self.threads:
            return self.threads
        return 1 if self.base_model == TINY else (os.cpu_count() or 1)


@dataclass
class RunSummary:
    """What one `run_study` call did."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    config: str = ""
    settings: RunSettings | None = None


def prepare_base(study: Study, settings: RunSettings, *, progress: bool = False) -> str:
    """The base model path or id; builds the study's tiny base once when asked for `tiny`."""
    if settings.base_model != TINY:
        from instructmining.models.loading import check_model_source

        # every candidate would fail the same way: stop before the first one
        return check_model_source(
            settings.base_model, indicator="study base model", option="--base-model"
        )
    from instructmining.experiments.finetune import set_threads
    from instructmining.experiments.tiny_base import base_folder, build_tiny_base
    from instructmining.models.loading import resolve_device

    cfg = replace(
        settings.tiny or TinyBaseConfig(),
        max_length=settings.train.max_length,
        seed=settings.train.seed,
    )
    folder = base_folder(study.path / "base", cfg)
    set_threads(settings.cpu_threads())
    build_tiny_base(
        list(study.pool.values()),
        folder,
        cfg,
        device=resolve_device(settings.device),
        progress=progress,
    )
    return str(folder)


def resolve_settings(settings: RunSettings, base: str) -> RunSettings:
    """Settings with "auto" template and precision decided for this base and device."""
    from instructmining.experiments.finetune import default_precision, load_tokenizer
    from instructmining.models.loading import resolve_device

    train = settings.train
    if train.template == "auto":
        tok = load_tokenizer(base)
        train = replace(train, template="chat" if getattr(tok, "chat_template", None) else "alpaca")
    if train.precision == "auto":
        train = replace(train, precision=default_precision(resolve_device(settings.device)))
    return replace(settings, train=train)


def indicator_means(frame: Any, columns: Sequence[str]) -> dict[str, float]:
    """Mean of each indicator column over a candidate (NaN values left out)."""
    return {c: float(frame[c].mean(skipna=True)) for c in columns}


def evaluate_model(
    model: Any, tokenizer: Any, eval_records: Sequence[Record], settings: RunSettings, device: str
) -> dict[str, Any]:
    """The eval-loss fields of a results row: `model` on D_eval under the run's settings."""
    from instructmining.experiments.evaluate import eval_loss

    ev = eval_loss(
        model,
        tokenizer,
        eval_records,
        max_length=settings.train.max_length,
        batch_size=settings.eval_batch_size,
        device=device,
        template=settings.train.template,
        precision=settings.train.precision,
    )
    return {
        "eval_loss": ev.loss,
        "eval_loss_example_mean": ev.example_mean,
        "eval_tokens": ev.tokens,
        "eval_s": ev.seconds,
        "eval_tokens_per_s": ev.tokens_per_s,
    }


def train_and_evaluate(
    base: str,
    records: Sequence[Record],
    eval_records: Sequence[Record],
    settings: RunSettings,
    *,
    save_to: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Finetune `base` on `records`, then the eval loss on D_eval; the timing/loss fields.

    `log` receives one line as each phase starts (for runs nobody watches on a terminal).
    """
    from instructmining.experiments.finetune import finetune, load_tokenizer, set_threads
    from instructmining.models.loading import resolve_device

    set_threads(settings.cpu_threads())
    device = resolve_device(settings.device)
    tok = load_tokenizer(base)
    if log:
        log(f"training on {len(records)} records")
    model, tok, stats = finetune(
        base,
        records,
        settings.train,
        tokenizer=tok,
        device=device,
        save_to=save_to,
        progress=progress,
    )
    if log:
        log(
            f"trained in {stats.seconds:.0f} s ({stats.tokens_per_s:.0f} tok/s); "
            f"evaluating on {len(eval_records)} records"
        )
    return {
        **evaluate_model(model, tok, eval_records, settings, device),
        "train_s": stats.seconds,
        "train_steps": stats.steps,
        "tokens_seen": stats.tokens,
        "train_target_tokens": stats.target_tokens,
        "train_tokens_per_s": stats.tokens_per_s,
        "train_first_loss": stats.first_loss,
        "train_last_loss": stats.last_loss,
        "train_responses_cut": stats.responses_cut,
        "device": device,
        "host": platform.node(),
    }


def _materialize(files: Mapping[str, bytes], folder: Path) -> None:
    for name, blob in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)


def run_task(
    base: str | dict[str, bytes],
    rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    settings: RunSettings,
    save_to: str | None,
) -> dict[str, Any]:
    """One candidate in a worker process (Ray task or local pool): plain data in and out.

    `base` is a path/hub id, or the files of a base folder (name -> bytes) shipped to
    a worker that cannot see the study folder.
    """
    import tempfile

    def recs(data: list[dict[str, Any]]) -> list[Record]:
        return [Record(r["instruction"], r["input"], r["output"], r["id"]) for r in data]

    from transformers.utils import logging as hf_logging

    # a worker process: its loading bars and notices would interleave on the driver's stderr
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    if isinstance(base, dict):
        with tempfile.TemporaryDirectory(prefix="im-base-") as tmp:
            _materialize(base, Path(tmp))
            out = train_and_evaluate(tmp, recs(rows), recs(eval_rows), settings, save_to=save_to)
    else:
        out = train_and_evaluate(base, recs(rows), recs(eval_rows), settings, save_to=save_to)
    out["task_s"] = time.perf_counter() - t0
    return out


def describe_error(exc: BaseException) -> str:
    """One line for the store: type, message and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def select_candidates(
    study: Study,
    *,
    force: bool = False,
    retry_failed: bool = False,
    only: Sequence[str] | None = None,
    config: str = "",
) -> list[dict[str, Any]]:
    """Candidates to run now, in plan order: not done (and not failed, unless retried)."""
    from instructmining.experiments.store import ResultsStore

    entries = ResultsStore(study.results_path, config).entries()
    chosen = []
    wanted = set(only) if only else None
    for cand in study.candidates:
        cid = cand["candidate_id"]
        if wanted is not None and cid not in wanted:
            continue
        entry = entries.get(cid)
        if entry is None or force or (entry.status == "failed" and retry_failed):
            chosen.append(cand)
    if wanted is not None:
        unknown = wanted - {c["candidate_id"] for c in study.candidates}
        if unknown:
            raise ParameterError(f"--only: unknown candidate ids: {', '.join(sorted(unknown))}")
    return chosen


def score_candidate(study: Study, candidate_id: str, indicators: Sequence[Any]) -> dict[str, Any]:
    """Mean of every study indicator over the candidate, scored through the study cache."""
    from instructmining.indicators.engine import score

    records = study.candidate_records(candidate_id)
    start = time.perf_counter()
    frame = score(records, list(indicators), cache=study.cache_dir)
    columns = [c for ind in indicators for c in ind.columns]
    return {**indicator_means(frame, columns), "score_s": time.perf_counter() - start}


def base_row(study: Study, cand: Mapping[str, Any], settings: RunSettings) -> dict[str, Any]:
    """The metadata every row of a candidate carries (how it was drawn, how it was trained)."""
    drawn: dict[str, Any] = {}
    if cand["kind"] == "univariate":  # the regression report shows loss per bin from these
        drawn = {"indicator": cand["indicator"], "bin": cand["bin"]}
    for source, share in (cand.get("proportions") or {}).items():
        drawn[f"proportion_{source}"] = share
    return {
        "candidate_id": cand["candidate_id"],
        "kind": cand["kind"],
        "n_records": cand["n_records"],
        **drawn,
        "base_model": settings.base_model,
        "lora": settings.train.lora,
        "config": settings.config_key(),
        "config_hash": settings.train.key(),
        "template": settings.train.template,
        "precision": settings.train.precision,
        "max_length": settings.train.max_length,
        "batch_size": settings.train.batch_size,
        "seed": settings.train.seed,
        "epochs": settings.train.epochs,
        "lr": settings.train.lr,
    }


def check_ray() -> None:
    """MissingPackageError with the install line when Ray is not installed (before any work)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise MissingPackageError(
            "--engine ray needs Ray, which is not installed: pip install 'instructmining[ray]' "
            "(or use --engine local)"
        )


def check_stores(study: Study) -> None:
    """Open the results store and the score cache once: a corrupt one stops the run before
    the base model is built (CorruptFileError naming the file)."""
    from instructmining.experiments.store import ResultsStore
    from instructmining.indicators.cache import ScoreCache

    ResultsStore(study.results_path).configs()
    if study.cache_dir.exists():
        with ScoreCache(study.cache_dir) as cache:
            cache.check()


@holds_study_lock("study baseline")
def evaluate_baseline(
    path: str | Path,
    settings: RunSettings,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """The base model's eval loss on D_eval before any finetuning, under `settings`.

    The reference every candidate's loss is read against: how far finetuning moved
    the model at all. Stored once per configuration in the results store; returns
    (row, computed): a recorded row is returned as it is unless `force`.
    """
    from instructmining.experiments.finetune import load_causal_lm, load_tokenizer, set_threads
    from instructmining.experiments.store import ResultsStore
    from instructmining.models.loading import resolve_device

    study = Study(path)
    check_stores(study)
    base = prepare_base(study, settings)
    settings = resolve_settings(settings, base)
    store = ResultsStore(study.results_path, settings.config_key())
    known = store.baseline()
    if known is not None and not force:
        return known, False
    set_threads(settings.cpu_threads())
    device = resolve_device(settings.device)
    tok = load_tokenizer(base)
    if log:
        log(f"evaluating the base model on {len(study.eval_records)} records")
    row = {
        "config": store.config,
        "base_model": settings.base_model,
        "template": settings.train.template,
        "precision": settings.train.precision,
        "max_length": settings.train.max_length,
        **evaluate_model(load_causal_lm(base, device), tok, study.eval_records, settings, device),
        "device": device,
        "host": platform.node(),
    }
    store.record_baseline(row)
    return row, True


@holds_study_lock("study run")
def run_study(
    path: str | Path,
    settings: RunSettings,
    *,
    engine: str = "local",
    force: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
    only: Sequence[str] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    cpus_per_task: float = 1,
    gpus_per_task: float = 0,
    progress: bool = False,
    on_result: Callable[[str, str, dict[str, Any] | str], None] | None = None,
    log_phases: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run every unfinished candidate of the study at `path` (see the module docstring).

    Holds the study's lock (`experiments.lock`): a second run on the folder is refused.
    """
    from instructmining.experiments.store import ResultsStore
    from instructmining.indicators.registry import from_params

    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if engine == "ray":
        check_ray()
    study = Study(path)
    # the manifest's stored settings are checked before any work (indicators.spec)
    manifest = study.path / "study.json"
    indicators = [from_params(p, source=manifest) for p in study.indicator_params]
    check_stores(study)  # a corrupt store stops the run before the base is built
    base = prepare_base(study, settings, progress=progress)
    settings = resolve_settings(settings, base)
    store = ResultsStore(study.results_path, settings.config_key())
    todo = select_candidates(
        study, force=force, retry_failed=retry_failed, only=only, config=store.config
    )
    skipped = (len(only) if only else len(study.candidates)) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    summary = RunSummary(skipped=skipped, config=store.config, settings=settings)
    start = time.perf_counter()
    if not todo:
        return summary

    def finish(cid: str, row: dict[str, Any] | None, error: str | None, wall: float) -> None:
        if error is None and row is not None:
            store.record_done(cid, row)
            summary.done.append(cid)
            if on_result:
                on_result(cid, "done", row)
        else:
            store.record_failed(cid, error or "unknown error", wall)
            summary.failed.append(cid)
            if on_result:
                on_result(cid, "failed", error or "")

    if engine == "ray":
        from instructmining.experiments.ray_engine import run_with_ray

        run_with_ray(
            study,
            todo,
            settings,
            base,
            indicators,
            finish=finish,
            address=ray_address,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
        )
    elif workers > 1:
        _run_pool(study, todo, settings, base, indicators, finish, workers)
    else:
        for cand in todo:
            cid = cand["candidate_id"]
            t0 = time.perf_counter()

            def log(line: str, cid: str = cid) -> None:
                if log_phases is not None:
                    log_phases(f"{cid}: {line}")

            try:
                log("scoring indicators")
                row = {**base_row(study, cand, settings), **score_candidate(study, cid, indicators)}
                save_to = str(study.path / "runs" / cid) if settings.keep_weights else None
                row |= train_and_evaluate(
                    base,
                    study.candidate_records(cid),
                    study.eval_records,
                    settings,
                    save_to=save_to,
                    progress=progress,
                    log=log,
                )
                row["wall_s"] = time.perf_counter() - t0
                finish(cid, row, None, row["wall_s"])
            except CorruptFileError:  # every candidate would fail the same way
                raise
            except Exception as exc:  # one candidate's failure must not end the study
                finish(cid, None, describe_error(exc), time.perf_counter() - t0)
    summary.seconds = time.perf_counter() - start
    return summary


def prepare_task(
    study: Study, cand: Mapping[str, Any], settings: RunSettings, indicators: Sequence[Any]
) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    """Driver side of a task: the row so far (metadata + indicator means), records, save path."""
    cid = cand["candidate_id"]
    row = {**base_row(study, cand, settings), **score_candidate(study, cid, indicators)}
    rows = [r.to_dict() for r in study.candidate_records(cid)]
    save_to = str(study.path / "runs" / cid) if settings.keep_weights else None
    return row, rows, save_to


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: the worker ends when the driver ends, kill -9 included.

    Otherwise an orphaned worker trains its candidate for nobody and then waits
    forever on the task pipe (its siblings hold the pipe open, so no end of file
    comes). On Linux the kernel kills it when the parent dies (prctl
    PR_SET_PDEATHSIG); where that is unavailable a thread checks the parent pid
    every second. A parent that died before either was armed is caught at once.
    """
    import signal
    import sys
    import threading

    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _run_pool(
    study: Study,
    todo: Sequence[dict[str, Any]],
    settings: RunSettings,
    base: str,
    indicators: Sequence[Any],
    finish: Callable[[str, dict[str, Any] | None, str | None, float], None],
    workers: int,
) -> None:
    """The local engine with `workers` processes, one candidate each at a time."""
    import concurrent.futures as cf
    import multiprocessing as mp

    eval_rows = [r.to_dict() for r in study.eval_records]
    queue = iter(todo)
    pending: dict[Any, tuple[str, dict[str, Any], float]] = {}
    with cf.ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:

        def submit_next() -> None:
            for cand in queue:
                cid, t0 = cand["candidate_id"], time.perf_counter()
                try:
                    row, rows, save_to = prepare_task(study, cand, settings, indicators)
                except CorruptFileError:
                    raise
                except Exception as exc:  # scoring failed: record it, take the next one
                    finish(cid, None, describe_error(exc), time.perf_counter() - t0)
                    continue
                fut = pool.submit(run_task, base, rows, eval_rows, settings, save_to)
                pending[fut] = (cid, row, t0)
                return

        # one task more than workers waits in the pool's queue: a worker that
        # finishes starts at once instead of waiting for the driver to score
        for _ in range(workers + 1):
            submit_next()
        while pending:
            ready, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            for fut in ready:
                cid, row, t0 = pending.pop(fut)
                try:
                    out = fut.result()
                except cf.process.BrokenProcessPool as exc:
                    finish(cid, None, describe_error(exc), time.perf_counter() - t0)
                    raise InstructMiningError(
                        "a worker process died (out of memory?); the unfinished candidates "
                        "stay pending: rerun `study run`, perhaps with fewer --workers"
                    ) from exc
                except Exception as exc:
                    finish(cid, None, describe_error(exc), time.perf_counter() - t0)
                else:
                    row = {**row, **out}
                    row["wall_s"] = row.pop("task_s") + row.get("score_s", 0.0)
                    finish(cid, row, None, row["wall_s"])
                submit_next()


def settings_for(base_model: str, **overrides: Any) -> RunSettings:
    """RunSettings with the tiny defaults for `tiny`, the general defaults otherwise."""
    train_over = {k: v for k, v in overrides.items() if k in TrainConfig.__dataclass_fields__}
    run_over = {k: v for k, v in overrides.items() if k in RunSettings.__dataclass_fields__}
    unknown = set(overrides) - set(train_over) - set(run_over)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    train = replace(TINY_TRAIN if base_model == TINY else REAL_TRAIN, **train_over)
    return RunSettings(base_model=base_model, train=train, **run_over)


def settings_dict(settings: RunSettings) -> dict[str, Any]:
    """RunSettings as plain data."""
    return asdict(settings)
