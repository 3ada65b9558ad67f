"""The shared neighbour search: exact below the size threshold, approximate (recall measured) above."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from instructmining import neighbours
from instructmining.errors import ParameterError
from instructmining.indicators.engine import score_records
from instructmining.indicators.registry import create
from instructmining.indicators.spec import IndicatorSettingsError, check_params
from instructmining.records import make_record
from instructmining.selection.dedup import DedupSettings, find_duplicates
from instructmining.selection.diversity import diverse_prefix

faiss = pytest.importorskip("faiss")


def _clustered(n, d=16, centers=12, sigma=0.15, seed=0):
    """Unit rows around a few centres (the structure of text embeddings, unlike uniform noise)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    x = c[rng.integers(0, centers, n)] + sigma * rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(x, k):
    sq = (x * x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1], np.argsort(d, axis=1, kind="stable")[:, :k]


def test_exact_path_equals_brute_force_with_ids():
    x = _clustered(120)
    x[7] = x[8]  # a twin: distance 0, itself still excluded
    found = neighbours.kth_neighbours(x, k=6, with_ids=True)
    want = _brute(x, 6)[0]
    assert found.index == "exact" and found.recall is None
    np.testing.assert_allclose(found.distances, want, atol=1e-12)
    assert found.ids is not None
    np.testing.assert_allclose(np.linalg.norm(x[found.ids[:, -1]] - x, axis=1), want, atol=1e-12)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_path_reports_its_recall(monkeypatch, kind):
    monkeypatch.setattr(neighbours, "RECALL_SAMPLE", 200)
    x = _clustered(1500, d=24)
    found = neighbours.kth_neighbours(x, k=6, index=kind, with_ids=True)
    assert found.index == kind and found.sampled == 200
    assert found.recall is not None and found.recall >= 0.95
    want, _ = _brute(x, 6)
    hit = np.isclose(found.distances, want, atol=1e-9)
    assert hit.mean() >= 0.95
    assert found.distances.min() >= 0 and (found.distances >= want - 1e-9).all()
    assert found.ids is not None and (found.ids != np.arange(len(x))[:, None]).all()
    assert "recall" in found.describe()


def _spread_out(n=3000, d=64):
    """Unit rows with no structure: inverted lists cannot reach recall 0.99."""
    x = np.random.default_rng(1).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_spread_out_data_falls_back_to_exact_only_while_exact_is_affordable(monkeypatch):
    monkeypatch.setattr(neighbours, "RECALL_SAMPLE", 100)
    monkeypatch.setattr(neighbours, "TUNE_SAMPLE", 100)
    x = _spread_out()
    want, _ = _brute(x, 6)
    small = neighbours.kth_neighbours(x, k=6, index="ivf")
    assert small.index == "exact" and "below 0.99: exact search" in small.note
    assert "tuning recall ivf 0." in small.note  # the recall it reached
    np.testing.assert_allclose(small.distances, want, atol=1e-12)
    monkeypatch.setattr(neighbours, "EXACT_FALLBACK_MAX", 1000)  # 3,000 rows: "too many"
    built = []
    real_hnsw = neighbours._hnsw_tuned
    monkeypatch.setattr(neighbours, "_hnsw_tuned", lambda *a: built.append(1) or real_hnsw(*a))
    large = neighbours.kth_neighbours(x, k=6, threshold=100)  # auto: IVF only at this size
    assert built == []
    assert large.index == "ivf" and large.recall is not None and large.recall < 0.99
    assert "below the recall target" in large.note and "recall" in large.describe()
    assert (large.distances >= want - 1e-9).all()  # a miss only makes a distance larger
    hit = np.isclose(large.distances, want, atol=1e-9).mean()
    assert abs(hit - large.recall) < 0.1  # the sampled recall tells the truth


def test_hnsw_widens_its_search_list_until_the_recall_target(monkeypatch):
    monkeypatch.setattr(neighbours, "RECALL_SAMPLE", 200)
    monkeypatch.setattr(neighbours, "TUNE_SAMPLE", 200)
    monkeypatch.setattr(neighbours, "HNSW_M", 8)  # a sparse graph: a short list misses
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want, _ = _brute(x, 6)
    monkeypatch.setattr(neighbours, "EXACT_FALLBACK_MAX", 1000)  # keep the miss, not exact
    monkeypatch.setattr(neighbours, "HNSW_EF_SEARCH", (7,))
    narrow = neighbours.kth_neighbours(x, k=6, index="hnsw")
    assert narrow.recall is not None and narrow.recall < 0.99
    assert narrow.index == "hnsw" and "below the recall target" in narrow.note
    monkeypatch.setattr(neighbours, "HNSW_EF_SEARCH", (7, 400))
    wide = neighbours.kth_neighbours(x, k=6, index="hnsw")
    assert wide.recall is not None and wide.recall >= 0.99 and wide.note == ""
    assert np.isclose(wide.distances, want, atol=1e-9).mean() >= 0.98
    assert (wide.distances >= want - 1e-9).all()


def test_auto_tries_hnsw_where_inverted_lists_miss(monkeypatch):
    monkeypatch.setattr(neighbours, "RECALL_SAMPLE", 100)
    monkeypatch.setattr(neighbours, "TUNE_SAMPLE", 100)
    x = _spread_out()
    want, _ = _brute(x, 6)
    found = neighbours.kth_neighbours(x, k=6, threshold=100)
    assert found.index == "hnsw" and found.recall is not None and found.recall >= 0.97
    assert "out of reach" not in found.note and (found.distances >= want - 1e-9).all()
    assert np.isclose(found.distances, want, atol=1e-9).mean() >= 0.98
    assert neighbours.resolve_index("auto", 101, threshold=100) == "approximate"


def test_without_faiss_the_search_stays_exact(monkeypatch):
    real = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    x = _clustered(300)
    found = neighbours.kth_neighbours(x, k=6, threshold=10)
    assert found.index == "exact" and found.recall is None and "faiss" in found.note
    np.testing.assert_allclose(found.distances, _brute(x, 6)[0], atol=1e-12)
    assert neighbours.resolve_index("hnsw", 10**6) == "exact"


def test_unknown_index_is_one_line():
    with pytest.raises(ParameterError, match=r"'index' setting must be one of auto, exact") as e:
        neighbours.kth_neighbours(_clustered(10), k=2, index="annoy")
    assert "\n" not in str(e.value)
    with pytest.raises(ParameterError, match="'index'"):
        create("knn6", index="flat").score([make_record("a"), make_record("b")])
    with pytest.raises(IndicatorSettingsError, match="'index' must be one of"):
        check_params({"name": "knn6", "index": "annoy"})


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["apple", "river", "cloud", "stone", "music", "paper", "light", "bread", "ocean"]
    return [
        make_record(f"Describe item {i % 7}", output=" ".join(rng.choice(words, size=6)))
        for i in range(n)
    ]


def test_knn6_keys_change_only_for_approximate_pools(monkeypatch):
    records = _records(60)
    ind = create("knn6")
    exact_key = ind.key()
    before = ind.score(records)
    assert "index" not in ind.params() and ind.key() == exact_key and ind.neighbours_ is None
    assert create("knn6", index="exact").key() == exact_key
    monkeypatch.setattr(neighbours, "EXACT_MAX", 20)
    monkeypatch.setattr(neighbours, "RECALL_SAMPLE", 30)
    table = score_records(records, [create("knn6")])
    frame = table.frame()
    run = table.runs["knn6"].to_dict()
    assert table.indicators["knn6"]["index"] == "approximate"
    assert run["neighbours"]["index"] == "ivf" and run["neighbours"]["sampled"] == 30
    assert run["neighbours"]["recall"] >= 0.9
    got = frame["knn6"].to_numpy()
    assert np.isclose(got, before, atol=1e-9).mean() >= 0.9
    small = score_records(records[:15], [create("knn6")])  # at most EXACT_MAX: exact, same key
    assert "index" not in small.indicators["knn6"]
    assert "neighbours" not in small.runs["knn6"].to_dict()
    json.dumps(table.run_dicts())


def test_score_prints_the_recall(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from instructmining.cli import main

    monkeypatch.setattr(neighbours, "EXACT_MAX", 20)
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in _records(60)))
    out = tmp_path / "scores.jsonl"
    args = ["score", str(data), "-o", str(out), "--profile", "lite", "--no-cache", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("knn6: "))
    assert "ivf neighbour search, recall of the k-th neighbour" in line
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    assert summary["runs"]["knn6"]["neighbours"]["recall"] >= 0.9


def test_diversity_and_semantic_pairs_agree_across_the_threshold(monkeypatch):
    x = _clustered(400, sigma=0.05)
    order = np.random.default_rng(1).permutation(len(x))
    small = diverse_prefix(order, x, 0.95, 150)
    pairs = neighbours.pairs_within(x, 0.95)
    monkeypatch.setattr(neighbours, "EXACT_MAX", 50)
    big = diverse_prefix(order, x, 0.95, 150)
    assert small[1] == big[1] and np.array_equal(small[0], big[0])
    again_pairs = neighbours.pairs_within(x, 0.95)
    assert [p[:2] for p in again_pairs] == [p[:2] for p in pairs]
    np.testing.assert_allclose([p[2] for p in again_pairs], [p[2] for p in pairs], atol=1e-12)
    records = [make_record(f"q{i}", output=f"answer number {i}") for i in range(len(x))]
    report = find_duplicates(records, DedupSettings(semantic=0.99), embeddings=x)
    monkeypatch.setattr(neighbours, "EXACT_MAX", 10**6)
    again = find_duplicates(records, DedupSettings(semantic=0.99), embeddings=x)
    assert report.clusters == again.clusters and len(report.links) == len(again.links)
