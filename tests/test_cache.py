import math
import sqlite3
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmining.errors import CorruptFileError
from instructmining.indicators.cache import ScoreCache, default_cache_path


def test_round_trip_nan_and_truncation(tmp_path):
    path = tmp_path / "c.sqlite"
    with ScoreCache(path) as cache:
        cache.register("k1", "mtld", {"name": "mtld", "threshold": 0.72})
        cache.put("k1", ["a", "b", "c"], [1.5, float("nan"), -0.0], [False, True, False])
    with ScoreCache(path) as cache:  # a new connection sees the committed batch
        found, values, trunc = cache.get("k1", ["c", "x", "a", "b", "a"])
        assert found.tolist() == [True, False, True, True, True]
        assert values[0] == 0.0 and math.isnan(values[1]) and values[2] == 1.5
        assert math.isnan(values[3]) and values[4] == 1.5
        assert trunc.tolist() == [False, False, False, True, False]
        assert cache.count() == 3 and cache.count("k1") == 3 and cache.count("k2") == 0
        assert cache.configs() == [
            {
                "key": "k1",
                "indicator": "mtld",
                "params": {"name": "mtld", "threshold": 0.72},
                "scores": 3,
            }
        ]
        assert not cache.get("k2", ["a"])[0].any()
        assert cache.get("k1", [])[0].shape == (0,)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=40))
def test_values_round_trip_bit_exactly(tmp_path_factory, values):
    cache = ScoreCache(tmp_path_factory.mktemp("c") / "c.sqlite")
    ids = [f"r{i}" for i in range(len(values))]
    cache.put("k", ids, values)
    found, got, _ = cache.get("k", ids)
    assert found.all()
    want = np.array(values, dtype=np.float64)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got[~np.isnan(got)]), np.signbit(want[~np.isnan(want)]))
    cache.close()


def test_a_failed_batch_leaves_nothing(tmp_path):
    cache = ScoreCache(tmp_path / "c.sqlite")
    with pytest.raises(ValueError, match="differ in length"):
        cache.put("k", ["a", "b"], [1.0])
    with pytest.raises(sqlite3.Error):  # the second row cannot be bound: the first is rolled back
        cache.put("k", ["a", object()], [1.0, 2.0])
    assert cache.count() == 0
    cache.put("k", ["a"], [1.0])
    assert cache.count() == 1


def test_wal_mode_and_concurrent_writers(tmp_path):
    path = tmp_path / "c.sqlite"
    ScoreCache(path).put("k", ["seed"], [0.0])
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def worker(w):
        cache = ScoreCache(path)
        for b in range(5):
            cache.put("k", [f"{w}-{b}-{i}" for i in range(50)], np.arange(50.0))
        cache.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ScoreCache(path).count("k") == 1 + 4 * 5 * 50


def test_schema_mismatch_is_refused(tmp_path):
    path = tmp_path / "c.sqlite"
    ScoreCache(path).put("k", ["a"], [1.0])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='99' WHERE name='schema'")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptFileError, match="delete the file or pass another --cache"):
        ScoreCache(path).count()


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv("INSTRUCTMINING_CACHE", raising=False)
    assert str(default_cache_path()) == ".instructmining/cache.sqlite"
    monkeypatch.setenv("INSTRUCTMINING_CACHE", str(tmp_path / "x.sqlite"))
    assert default_cache_path() == tmp_path / "x.sqlite"
