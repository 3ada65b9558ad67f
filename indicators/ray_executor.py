"""The Ray executor: per-record indicator batches on a pool of Ray actors.

`RayExecutor` implements the `Executor` protocol (`indicators.executors`): the
engine hands it batches and gets back, in the batches' order, the values or
features of each. Each actor is a long-lived worker process that runs
`run_batch`; since indicators load their models through the per-process cache
of `instructmining.models`, an actor loads a model once and reuses it for every
batch and every later `map` call of the same executor. The indicator itself is
put in the object store once per `map` call (a set-level indicator's fitted
state is shipped once, not once per batch) and each actor deserialises it once.

Where it runs: without an address, a private local Ray instance whose workers
use this Python environment; with `address` ("auto", "ray://host:10001"), an
existing cluster, whose every node needs `instructmining` installed (plus the
indicators' packages, plugin indicators and any model paths they name). The
score cache lives on the driver: workers never open it, they only compute, so
an interrupted run is resumed by rerunning the command on the driver, which
skips the batches already cached. Worker logs are not forwarded to the driver
(Ray keeps them in its session folder, e.g. /tmp/ray/session_latest/logs).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from instructmining.errors import MissingPackageError, ParameterError
from instructmining.indicators.base import Indicator
from instructmining.indicators.executors import Batch, Done, Method, run_batch
from instructmining.records import Record

#: thread-count variables set in every actor so BLAS/torch use only the actor's CPUs
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def require_ray() -> None:
    """Fail now, with the install command, when ray is missing."""
    _import_ray()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingPackageError(
            "the Ray executor needs ray: pip install 'instructmining[ray]'"
        ) from exc
    return ray


class _BatchActor:
    """One Ray worker process: runs batches, keeping the last indicator it was sent."""

    def __init__(self, threads: int) -> None:
        self._key: bytes | None = None
        self._ind: Indicator | None = None
        torch = sys.modules.get("torch")  # imported later, torch reads OMP_NUM_THREADS itself
        if torch is not None:
            torch.set_num_threads(threads)

    def run(
        self, boxed: list[Any], method: Method, records: Sequence[Record]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`run_batch` on the indicator behind `boxed` ([ObjectRef, name]: boxed so Ray
        does not resolve it per call), deserialised only when it changes."""
        ref, name = boxed
        if ref.binary() != self._key or self._ind is None:
            import ray

            try:
                self._ind = ray.get(ref)
            except Exception as exc:  # typically a class this node cannot import
                reason = str(getattr(exc, "err", exc)).splitlines()[0]
                raise MissingPackageError(
                    f"a Ray worker cannot load the indicator {name!r} ({reason}): every Ray"
                    " node needs instructmining and the indicators' packages installed"
                ) from exc
            self._key = ref.binary()
        return run_batch(self._ind, method, records)


class RayExecutor:
    """Runs an indicator's batches on `num_actors` Ray actors, results in input order.

    Each actor asks for `cpus_per_actor` CPUs and `gpus_per_actor` GPUs (fractions
    share a GPU) and runs BLAS/torch on int(cpus_per_actor) threads (at least 1).
    At most `max_in_flight` batches (default 2 per actor) are submitted or waiting
    to be yielded at any time, so a streamed input is read only as fast as it is
    computed. Ray is started (or joined) on first use; use `close()` or `with`.
    """

    def __init__(
        self,
        num_actors: int = 2,
        gpus_per_actor: float = 0,
        cpus_per_actor: float = 1,
        address: str | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        if num_actors < 1:
            raise ParameterError(f"num_actors must be at least 1, got {num_actors}")
        if gpus_per_actor < 0 or cpus_per_actor < 0:
            raise ParameterError(
                f"gpus_per_actor and cpus_per_actor must be >= 0, got {gpus_per_actor}"
                f" and {cpus_per_actor}"
            )
        if max_in_flight is not None and max_in_flight < 1:
            raise ParameterError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.num_actors = num_actors
        self.gpus_per_actor = gpus_per_actor
        self.cpus_per_actor = cpus_per_actor
        self.address = address
        self.max_in_flight = max_in_flight if max_in_flight is not None else 2 * num_actors
        self._ray: Any = None
        self._started_ray = False
        self._actors: list[Any] = []

    # -- lifecycle ---------------------------------------------------------------

    def _start(self) -> Any:
        """The ray module, with Ray initialised and the actors created (once)."""
        ray = self._ray or _import_ray()
        self._ray = ray
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                self._init_local(ray)
            self._started_ray = True
        if not self._actors:
            threads = max(1, int(self.cpus_per_actor))
            actor_cls = ray.remote(_BatchActor).options(
                num_cpus=self.cpus_per_actor,
                num_gpus=self.gpus_per_actor,
                max_restarts=0,
                max_task_retries=0,
                runtime_env={"env_vars": dict.fromkeys(_THREAD_VARS, str(threads))},
            )
            self._actors = [actor_cls.remote(threads) for _ in range(self.num_actors)]
        return ray

    def _init_local(self, ray: Any) -> None:
        """A private local instance; refuses a pool this machine cannot place (it would hang)."""
        need_cpus = self.num_actors * self.cpus_per_actor
        have_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        kwargs: dict[str, Any] = {}
        if have_cpus is not None and need_cpus > have_cpus:  # oversubscribe, as asked
            kwargs["num_cpus"] = int(np.ceil(need_cpus))
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            **kwargs,
        )
        total = ray.cluster_resources()
        need_gpus = self.num_actors * self.gpus_per_actor
        if need_gpus > total.get("GPU", 0) or need_cpus > total.get("CPU", 0):
            ray.shutdown()
            raise ParameterError(
                f"{self.num_actors} Ray actors need {need_cpus:g} CPUs and {need_gpus:g} GPUs;"
                f" this machine has {total.get('CPU', 0):g} and {total.get('GPU', 0):g}"
            )

    def _drop_actors(self) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already dead, or Ray shut down
                self._ray.kill(actor)
        self._actors = []

    def close(self) -> None:
        """Kill the actors; shut Ray down (or disconnect) only if this executor started it."""
        if self._ray is None:
            return
        self._drop_actors()
        if self._started_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- work --------------------------------------------------------------------

    def map(self, ind: Indicator, method: Method, batches: Iterable[Batch]) -> Iterator[Done]:
        """Results of `getattr(ind, method)(records)` per batch, in the batches' order.

        An exception raised by the indicator in a worker is re-raised here as itself
        (same type and message); a worker that died raises RuntimeError.
        """
        ray = self._start()
        shipped = copy.copy(ind)
        shipped.progress_ = None  # a callback of this process; the engine reports progress
        boxed = [ray.put(shipped), ind.name]
        del shipped
        source = iter(batches)
        pending: dict[Any, tuple[int, int, int]] = {}  # ref -> (position, batch index, actor)
        finished: dict[int, Done] = {}  # position -> result not yet yielded
        load = [0] * len(self._actors)
        submitted = yielded = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) + len(finished) < self.max_in_flight:
                    try:
                        index, records = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    actor = min(range(len(load)), key=load.__getitem__)
                    ref = self._actors[actor].run.remote(boxed, method, records)
                    pending[ref] = (submitted, index, actor)
                    load[actor] += 1
                    submitted += 1
                if yielded in finished:
                    yield finished.pop(yielded)
                    yielded += 1
                    continue
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    position, index, actor = pending.pop(ref)
                    load[actor] -= 1
                    values, flags = self._get(ray, ref, ind, index)
                    finished[position] = (index, values, flags)
        finally:
            for ref in pending:  # queued batches of an abandoned map; running ones finish
                with contextlib.suppress(Exception):
                    ray.cancel(ref)

    def _get(self, ray: Any, ref: Any, ind: Indicator, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One batch's result, with the worker's own exception or a clear message for a death."""
        errors = ray.exceptions
        try:
            values, flags = ray.get(ref)
        except errors.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from exc
            raise
        except (errors.RayActorError, errors.WorkerCrashedError, errors.NodeDiedError) as exc:
            self._drop_actors()  # a later map starts a fresh pool
            if getattr(exc, "actor_init_failed", False):
                raise RuntimeError(
                    f"a Ray worker could not start for {ind.name!r}: is instructmining"
                    " installed on every node? (see the chained error)"
                ) from exc
            raise RuntimeError(
                f"a Ray worker died while computing {ind.name!r} (batch {index});"
                " rerun the command: batches already finished are cached"
            ) from exc
        # results read from Ray's object store are read-only views of shared memory
        return np.array(values), np.array(flags, dtype=bool)
