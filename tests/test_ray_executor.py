"""RayExecutor against LocalExecutor on one local 2-CPU Ray instance shared by the module."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from instructmining.errors import InputError  # noqa: E402
from instructmining.indicators.base import Indicator  # noqa: E402
from instructmining.indicators.executors import Batch, Done, LocalExecutor  # noqa: E402
from instructmining.indicators.ray_executor import RayExecutor  # noqa: E402
from instructmining.indicators.registry import create  # noqa: E402
from instructmining.records import Record, make_record  # noqa: E402

pytestmark = pytest.mark.slow  # a local Ray starts in ~10 s on a busy machine


class Features(Indicator):
    """Three features per record; a batch above 500 records is slow (test-only)."""

    name = "features"
    description = "output characters, words and a constant"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return self.transform(records)[:, 0]

    def transform(self, records: Sequence[Record]) -> np.ndarray:
        if len(records) > 500:
            time.sleep(0.5)  # finishes after the small batches submitted behind it
        return np.array([[len(r.output), len(r.output.split()), 1.5] for r in records])


class Refuses(Indicator):
    """Raises the user-facing error of a bad record (test-only)."""

    name = "refuses"
    description = "always fails"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        raise InputError(f"record {records[0].id}: no output to score")


class Dies(Indicator):
    """Kills its worker process (test-only)."""

    name = "dies"
    description = "exits the process"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        os._exit(1)


class Probe(Indicator):
    """Per record: how often this process has unpickled a Probe, and its BLAS threads."""

    name = "probe"
    description = "worker-side facts"

    def __setstate__(self, state: dict[str, Any]) -> None:
        os.environ["PROBE_LOADS"] = str(int(os.environ.get("PROBE_LOADS", "0")) + 1)
        self.__dict__.update(state)

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return self.transform(records)[:, 0]

    def transform(self, records: Sequence[Record]) -> np.ndarray:
        row = [float(os.environ["PROBE_LOADS"]), float(os.environ["OMP_NUM_THREADS"])]
        return np.array([row] * len(records))


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """A local Ray with 2 CPUs; the test classes above travel by value (workers cannot
    import this test module)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(ray_session: Any) -> Iterator[RayExecutor]:
    """Two actors shared by the tests (an actor takes seconds to start here)."""
    with RayExecutor(num_actors=2) as pool:
        yield pool
    assert ray_session.is_initialized()  # not shut down: this executor did not start Ray


def _records(n: int) -> list[Record]:
    words = ["alpha", "beta", "gamma", "delta", "alpha", "beta", "epsilon"]
    return [
        make_record(
            f"task {i} " + "please " * (i % 5),
            input="" if i % 3 else f"context {i}",
            output=" ".join(words[(i + j) % len(words)] for j in range(i % 40)),
        )
        for i in range(n)
    ]


def _batches(records: list[Record]) -> list[Batch]:
    """One big batch first, then small ones: the small ones finish first."""
    cuts = [0, 2000, *range(2050, len(records), 50), len(records)]
    return [(10 * k, records[a:b]) for k, (a, b) in enumerate(pairwise(cuts))]


def _assert_same(got: list[Done], want: list[Done]) -> None:
    assert [d[0] for d in got] == [d[0] for d in want]
    for (_, values, flags), (_, want_values, want_flags) in zip(got, want, strict=True):
        assert values.shape == want_values.shape
        assert np.array_equal(values, want_values, equal_nan=True)
        assert np.array_equal(flags, want_flags)


@pytest.mark.parametrize("name", ["input_length", "output_length", "mtld"])
def test_scores_equal_local_in_input_order(executor: RayExecutor, name: str) -> None:
    records = _records(3000)
    ind = create(name)
    lock = threading.Lock()
    ind.progress_ = lambda n: lock  # unpicklable: must not be shipped to workers
    batches = _batches(records)
    want = list(LocalExecutor().map(ind, "score", batches))
    got = list(executor.map(ind, "score", iter(batches)))
    _assert_same(got, want)
    assert ind.progress_ is not None  # the driver's indicator is untouched


def test_transform_and_a_second_map_on_the_same_actors(executor: RayExecutor) -> None:
    records = _records(2600)
    ind = Features()
    batches = _batches(records)
    want = list(LocalExecutor().map(ind, "transform", batches))
    got = list(executor.map(ind, "transform", batches))
    again = list(executor.map(ind, "score", batches[1:4]))
    _assert_same(got, want)
    assert got[0][1].shape == (2000, 3)
    got[0][1][0, 0] = -1.0  # writable, like the local executor's arrays
    _assert_same(again, list(LocalExecutor().map(ind, "score", batches[1:4])))


def test_indicator_error_arrives_as_itself(executor: RayExecutor) -> None:
    records = _records(10)
    with pytest.raises(InputError, match=r"^record \w+: no output to score$") as info:
        list(executor.map(Refuses(), "score", [(0, records[:5]), (1, records[5:])]))
    assert type(info.value) is InputError
    # the actors survive an indicator's error
    [(_, values, _)] = executor.map(create("output_length"), "score", [(0, records)])
    assert values.shape == (10,)


def test_dead_worker_names_indicator_and_batch(executor: RayExecutor) -> None:
    # its own actor, asking no CPU: the shared executor holds both
    with (
        RayExecutor(num_actors=1, cpus_per_actor=0) as doomed,
        pytest.raises(RuntimeError, match=r"'dies' \(batch 7\).*rerun"),
    ):
        list(doomed.map(Dies(), "score", [(7, _records(3))]))


def test_max_in_flight_bounds_what_is_pulled(
    executor: RayExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _records(400)
    pulled = 0

    def batches() -> Iterator[Batch]:
        nonlocal pulled
        for k in range(40):
            pulled += 1
            yield k, records[10 * k : 10 * k + 10]

    ind = create("output_length")
    monkeypatch.setattr(executor, "max_in_flight", 3)
    results = executor.map(ind, "score", batches())
    first = next(results)
    assert first[0] == 0
    assert pulled <= 3 + 1
    rest = list(results)
    assert [d[0] for d in rest] == list(range(1, 40))
    _assert_same([first, *rest], list(LocalExecutor().map(ind, "score", batches())))


def test_indicator_is_unpickled_once_per_map_and_actor(executor: RayExecutor) -> None:
    records = _records(200)
    batches = [(k, records[10 * k : 10 * k + 10]) for k in range(20)]
    ind = Probe()
    first = np.concatenate([v for _, v, _ in executor.map(ind, "transform", batches)])
    second = np.concatenate([v for _, v, _ in executor.map(ind, "transform", batches)])
    assert set(first[:, 0]) == {1.0} and set(second[:, 0]) == {2.0}
    assert set(first[:, 1]) == {1.0}  # int(cpus_per_actor) threads
