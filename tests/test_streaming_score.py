"""The streaming engine: files scored batch by batch, set-level indicators in phases,
per-record embeddings cached, large sets fitted on a key-ordered sample."""

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from instructmining.errors import InputError
from instructmining.indicators import keys as keys_module
from instructmining.indicators import knn as knn_module
from instructmining.indicators import perplexity as perplexity_module
from instructmining.indicators.cache import ScoreCache
from instructmining.indicators.engine import score_file, score_records
from instructmining.indicators.execute import ListSource, compute
from instructmining.indicators.registry import create
from instructmining.readers import read_records
from instructmining.records import make_record

WORDS = ["sun", "moon", "river", "stone", "bread", "light", "paper", "cloud", "garden", "ocean"]


def _records(n, seed=0, prefix="task"):
    rng = np.random.default_rng(seed)
    return [
        make_record(
            f"{prefix} {i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6)))),
            output=" ".join(rng.choice(WORDS, size=int(rng.integers(2, 25)))),
            id=f"{prefix}-{i}",
        )
        for i in range(n)
    ]


def _write_jsonl(path, records, bad_line_at=None):
    with open(path, "w") as fh:
        for i, r in enumerate(records):
            if bad_line_at is not None and i == bad_line_at:
                fh.write("{not json\n")
            fh.write(
                json.dumps({"id": r.id, "instruction": r.instruction, "output": r.output, "x": i})
                + "\n"
            )


LITE = ["input_length", "output_length", "mtld", "knn6", "perplexity"]


def test_a_streamed_file_scores_exactly_as_records_in_memory(tmp_path):
    records = _records(300)
    data = tmp_path / "pool.jsonl"
    _write_jsonl(data, records, bad_line_at=100)
    out = tmp_path / "scores.jsonl"
    report = score_file(data, out, indicators=LITE, on_error="skip", keep_fields=True)
    assert report.n_records == 300 and report.n_rejects == 1
    assert json.loads(report.rejects_path.read_text())["line"] == 101
    written = pd.read_json(out, lines=True)
    expected = score_records(records, LITE).frame()
    assert list(written.columns) == ["id", "instruction", "output", "x", *LITE]
    for col in LITE:
        np.testing.assert_allclose(written[col], expected[col], rtol=1e-12)
    assert written["x"].tolist() == list(range(300))


def _peak_mb(data, out):
    tracemalloc.start()
    score_file(data, out, indicators=["input_length", "output_length"], overwrite=True)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak


def test_memory_grows_with_the_batch_not_the_file(tmp_path):
    sizes, peaks = [], []
    for n in (500, 4_000, 16_000):
        data = tmp_path / f"pool{n}.jsonl"
        with open(data, "w") as fh:
            for i in range(n):
                row = {"id": str(i), "instruction": "w " * 200, "output": "v " * 300}
                fh.write(json.dumps(row) + "\n")
        sizes.append(data.stat().st_size / 2**20)
        peaks.append(_peak_mb(data, tmp_path / "s.jsonl"))  # the first run pays the imports
    tracemalloc.start()
    read_records(tmp_path / "pool16000.jsonl")
    whole = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert whole > sizes[2] > 15  # reading it whole holds the file
    # 4x the file: the peak grows by the per-record numbers (ids, keys, values), not the text
    assert peaks[2] - peaks[1] < 0.15 * (sizes[2] - sizes[1]), (peaks, sizes)


class _Changing:
    """A source whose second pass differs from the first (a file being rewritten)."""

    def __init__(self, first, second):
        self.passes = [first, second]

    def batches(self):
        records = self.passes.pop(0) if len(self.passes) > 1 else self.passes[0]
        yield from ListSource(records, 16).batches()


def test_an_input_that_changes_between_passes_is_refused(tmp_path):
    first = _records(40)
    second = _records(40, seed=1)
    cache = ScoreCache(tmp_path / "c.sqlite")
    with pytest.raises(InputError, match="changed while it was being scored"):
        compute(_Changing(first, second), [create("output_length")], store=cache)
    assert cache.count() == 0  # nothing cached under the wrong record's key


def test_adding_records_computes_only_their_embeddings(tmp_path, tiny_sentence_transformer):
    pool = _records(60)
    more = pool + _records(10, seed=5, prefix="new")
    cache = ScoreCache(tmp_path / "c.sqlite")

    def knn():
        return create("knn6", model=f"st:{tiny_sentence_transformer}", device="cpu")

    first = score_records(pool, [knn()], cache=cache, chunk_size=16)
    assert first.runs["knn6"].features_computed == 60
    second = score_records(more, [knn()], cache=cache, chunk_size=16)
    run = second.runs["knn6"]
    assert (run.features_computed, run.features_cached) == (10, 60)
    assert run.computed == 70  # distances are set-level: all recomputed, cheaply
    # a model's float32 embeddings move in the last bits with the batch they ran in
    fresh = score_records(more, [knn()], chunk_size=70)  # no cache, one chunk
    np.testing.assert_allclose(second.columns["knn6"], fresh.columns["knn6"], rtol=1e-5)
    np.testing.assert_allclose(first.columns["knn6"], knn().score(pool), rtol=1e-5)
    again = score_records(more, [knn()], cache=cache, chunk_size=16)
    assert again.runs["knn6"].computed == 0  # the set's distances are cached too
    np.testing.assert_array_equal(again.columns["knn6"], second.columns["knn6"])


@pytest.mark.slow  # about a minute: 10,000 texts through the tiny model
def test_ten_new_records_in_a_scored_10k_pool_cost_ten_embeddings(
    tmp_path, tiny_sentence_transformer
):
    """The issue's acceptance at its own size: 10,000 scored records, then 10 more."""
    pool, more = _records(10_000), _records(10, seed=9, prefix="new")
    cache = ScoreCache(tmp_path / "c.sqlite")

    def knn():
        return create("knn6", model=f"st:{tiny_sentence_transformer}", device="cpu")

    first = score_records(pool, [knn()], cache=cache)
    assert first.runs["knn6"].features_computed == 10_000
    second = score_records(pool + more, [knn()], cache=cache)
    run = second.runs["knn6"]
    assert (run.features_computed, run.features_cached) == (10, 10_000)
    assert cache.count_vectors() == 10_010
    assert np.isfinite(second.columns["knn6"]).all()


@pytest.fixture
def small_fit(monkeypatch):
    """Set-level fits read at most 25 records, so that 80 records take the sampled path."""
    for module in (keys_module, knn_module, perplexity_module):
        monkeypatch.setattr(module, "FIT_SAMPLE", 25)


@pytest.mark.parametrize("name", ["knn6", "perplexity"])
def test_a_large_set_fits_on_its_sample_and_streams_the_rest(small_fit, name, tmp_path):
    records = _records(80)
    whole = create(name).score(records[:25])  # at most FIT_SAMPLE: the whole-set values
    assert "fit_sample" not in create(name).params()
    one_call = create(name)
    direct = one_call.score(records)
    assert one_call.params()["fit_sample"] == 25
    streamed = score_records(records, [name], chunk_size=7, cache=tmp_path / "c.sqlite")
    assert streamed.indicators[name]["fit_sample"] == 25
    np.testing.assert_allclose(streamed.columns[name], direct, rtol=1e-6)
    shuffled = list(reversed(records))  # the sample is by key: input order does not matter
    again = score_records(shuffled, [name], chunk_size=11).columns[name][::-1]
    np.testing.assert_allclose(again, direct, rtol=1e-6)
    assert np.isfinite(direct).all() and len(whole) == 25


def test_the_sample_is_the_smallest_keys_whatever_the_order():
    records = _records(50)
    sample = keys_module.fit_sample(records, 10)
    assert sample == keys_module.fit_sample(list(reversed(records)), 10)
    assert sorted(keys_module.record_keys(sample)) == sorted(keys_module.record_keys(records))[:10]


def test_engine_options_are_checked_before_any_work(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from instructmining.cli import main
    from instructmining.errors import MissingPackageError
    from instructmining.indicators import ray_executor

    data = tmp_path / "pool.jsonl"
    _write_jsonl(data, _records(5))
    out = tmp_path / "s.jsonl"
    result = CliRunner().invoke(main, ["score", str(data), "-o", str(out), "--gpus-per-actor", "1"])
    assert result.exit_code == 2 and "need --engine ray" in result.output

    def missing():
        raise MissingPackageError("the Ray executor needs ray: pip install 'instructmining[ray]'")

    monkeypatch.setattr(ray_executor, "require_ray", missing)
    result = CliRunner().invoke(main, ["score", str(data), "-o", str(out), "--engine", "ray"])
    assert result.exit_code == 1 and "pip install 'instructmining[ray]'" in result.output
    assert not out.exists()
