import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmining.errors import InstructMiningError
from instructmining.indicators import profiles
from instructmining.indicators.base import Indicator
from instructmining.indicators.cache import ScoreCache
from instructmining.indicators.engine import (
    cache_key,
    record_keys,
    score,
    score_file,
    score_records,
)
from instructmining.indicators.registry import create
from instructmining.records import make_record


class Counted(Indicator):
    """Characters of the output; remembers every call (not registered)."""

    name = "counted"
    description = "output characters"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale
        self._calls: list[int] = []

    def score(self, records):
        self._calls.append(len(records))
        return np.array([len(r.output) * self.scale for r in records], dtype=np.float64)


class SetMean(Counted):
    """Output length minus the set's mean length: depends on the whole set."""

    name = "set_mean"
    dataset_level = True

    def score(self, records):
        self._calls.append(len(records))
        n = np.array([len(r.output) for r in records], dtype=np.float64)
        return n - n.mean()


def _records(n, prefix="answer"):
    return [make_record(f"task {i}", output=f"{prefix} {'x' * (i % 7)}") for i in range(n)]


def test_second_run_is_served_from_the_cache(tmp_path):
    records = _records(50)
    path = tmp_path / "c.sqlite"
    first_ind = Counted()
    first = score_records(records, [first_ind, "output_length"], cache=path, chunk_size=16)
    assert first_ind._calls == [16, 16, 16, 2]
    assert first.runs["counted"].computed == 50
    again_ind = Counted()
    again = score_records(records, [again_ind, "output_length"], cache=path, chunk_size=16)
    assert again_ind._calls == []
    assert (again.runs["counted"].computed, again.runs["counted"].cached) == (0, 50)
    pd.testing.assert_frame_equal(first.frame(), again.frame())
    assert list(first.frame().columns) == ["id", "counted", "output_length"]
    assert first.indicators["counted"] == Counted().params()


def test_only_missing_or_edited_records_are_computed(tmp_path):
    path = tmp_path / "c.sqlite"
    records = _records(20)
    score(records[:12], [Counted()], cache=path)
    edited = make_record(records[3].instruction, output="changed", id=records[3].id)
    mixed = [*records[:3], edited, *records[4:]]
    ind = Counted()
    frame = score(mixed, [ind], cache=path)
    assert ind._calls == [1 + 8]  # the edited record and the 8 never seen
    assert frame["counted"].tolist() == [len(r.output) for r in mixed]


def test_settings_change_the_key_runtime_settings_do_not(tmp_path):
    path = tmp_path / "c.sqlite"
    records = _records(5)
    score(records, [Counted()], cache=path)
    ind = Counted(scale=2.0)
    frame = score(records, [ind], cache=path)
    assert ind._calls == [5] and frame["counted"].iloc[1] == 2 * len(records[1].output)
    a = create("perplexity", model="x", batch_size=1, device="cpu")
    b = create("perplexity", model="x", batch_size=64, device="auto")
    assert a.key() == b.key() and "device" not in a.params() and "batch_size" not in a.params()
    assert a.key() != create("perplexity", model="x", max_length=16).key()


def test_dataset_level_scores_are_keyed_by_the_set(tmp_path):
    path = tmp_path / "c.sqlite"
    records = _records(10)
    ind = SetMean()
    first = score(records, [ind], cache=path, chunk_size=3)
    assert ind._calls == [10]  # never chunked
    ind2 = SetMean()
    score(records[::-1], [ind2], cache=path)
    assert ind2._calls == []  # same set in another order: cached
    ind3 = SetMean()
    sub = score(records[:6], [ind3], cache=path)
    assert ind3._calls == [6]  # another set: other values
    assert not np.allclose(sub["set_mean"], first["set_mean"][:6])
    keys = record_keys(records)
    assert cache_key(SetMean(), keys) != cache_key(SetMean(), keys[:6])
    assert cache_key(Counted(), keys) == cache_key(Counted(), keys[:6])


def test_no_cache_recomputes_and_empty_input():
    ind = Counted()
    score(_records(4), [ind])
    score(_records(4), [ind])
    assert ind._calls == [4, 4]
    frame = score([], ["input_length", "mtld", "knn6", "perplexity"], cache=None)
    assert frame.shape == (0, 5)


def test_default_indicators_are_the_offline_profile(tmp_path):
    table = score_records(_records(12), cache=ScoreCache(tmp_path / "c.sqlite"))
    assert list(table.frame().columns) == ["id", *profiles.OFFLINE_INDICATORS]
    assert table.indicators["knn6"]["backend"] == "tfidf-svd"
    assert table.indicators["perplexity"]["backend"] == "ngram"
    with pytest.raises(ValueError, match="given more than once"):
        score(_records(2), ["mtld", "mtld"])


def test_offline_profile_leaves_out_model_indicators_with_reasons():
    plan = profiles.build()
    assert plan.profile == "lite"
    assert [i.name for i in plan.indicators] == list(profiles.OFFLINE_INDICATORS)
    for name in ("reward", "naturalness", "coherence", "understandability"):
        assert name in plan.left_out
    assert "--model reward=PATH" in plan.left_out["reward"]
    assert "--model unieval=PATH" in plan.left_out["coherence"]


def test_model_overrides_and_unieval_key(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    plan = profiles.build(
        models={"perplexity": str(ckpt), "knn6": str(ckpt)}, batch_size=3, device="cpu"
    )
    by_name = {i.name: i for i in plan.indicators}
    assert by_name["perplexity"].backend == "causal-lm" and by_name["perplexity"].model == str(ckpt)
    assert by_name["knn6"].backend == "sentence-transformers"
    assert by_name["knn6"].batch_size == 3 and by_name["perplexity"].device == "cpu"
    assert profiles.expand_models({"unieval": "U", "coherence": "C"}) == {
        "naturalness": "U",
        "coherence": "C",
        "understandability": "U",
    }
    with pytest.raises(KeyError, match="unknown key; choose from"):
        profiles.expand_models({"bogus": "x"})
    with pytest.raises(KeyError, match="unknown profile"):
        profiles.build("fast")


def test_model_given_in_the_offline_profile_joins_it(tmp_path):
    if "reward" not in profiles.registered():
        pytest.skip("reward indicator not registered")
    ckpt = tmp_path / "rm"
    ckpt.mkdir()
    plan = profiles.build(models={"reward": str(ckpt)})
    assert "reward" in [i.name for i in plan.indicators] and "reward" not in plan.left_out


def test_paper_profile_fails_fast_naming_the_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InstructMiningError) as err:
        profiles.build("paper")
    message = str(err.value)
    assert "--model" in message and ("/" in message)
    plan = profiles.build("paper", check_models=False)
    names = [i.name for i in plan.indicators] + list(plan.left_out)
    assert sorted(names) == sorted(profiles.PAPER_INDICATORS)
    by_name = {i.name: i for i in plan.indicators}
    assert by_name["perplexity"].model == "meta-llama/Llama-2-7b-hf"
    assert by_name["knn6"].backend == "sentence-transformers"


def test_score_file_writes_profile_left_out_and_runs(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps(r.to_dict()) + "\n" for r in _records(15, prefix="the answer is"))
    )
    out = tmp_path / "s.parquet"
    report = score_file(data, out, cache=tmp_path / "c.sqlite")
    summary = json.loads(report.summary_path.read_text())
    assert summary["profile"] == "lite" and "reward" in summary["left_out"]
    assert summary["indicators"]["knn6"]["backend"] == "tfidf-svd"
    assert summary["runs"]["mtld"]["computed"] == 15
    again = score_file(data, out, cache=tmp_path / "c.sqlite", overwrite=True)
    assert all(r["computed"] == 0 for r in again.runs.values())
    assert len(pd.read_parquet(out)) == 15
    with pytest.raises(ValueError, match="carry their own settings"):
        score_file(data, out, indicators=[Counted()], profile="paper", overwrite=True)


def test_settings_a_backend_does_not_use_stay_out_of_its_key():
    assert create("perplexity").key() == create("perplexity", max_length=64, dtype="fp16").key()
    assert "order" not in create("perplexity", model="m").params()
    assert create("knn6").key() == create("knn6", max_length=64).key()
    assert create("knn6", model="m").key() == create("knn6", model="m", dims=8).key()
    assert create("knn6").key() != create("knn6", dims=8).key()


@settings(max_examples=25, deadline=None)
@given(
    outputs=st.lists(st.text(alphabet="ab c", max_size=12), min_size=1, max_size=30),
    chunk=st.integers(1, 8),
    seen=st.lists(st.integers(0, 29), max_size=10),
)
def test_any_cached_subset_and_chunking_give_the_uncached_result(
    tmp_path_factory, outputs, chunk, seen
):
    records = [make_record(f"t{i % 4}", output=o) for i, o in enumerate(outputs)]
    cache = ScoreCache(tmp_path_factory.mktemp("c") / "c.sqlite")
    names = ["output_length", "mtld"]
    score([records[i] for i in sorted(set(seen)) if i < len(records)], names, cache=cache)
    got = score(records, names, cache=cache, chunk_size=chunk)
    pd.testing.assert_frame_equal(got, score(records, names), check_exact=True)
    cache.close()


def test_python_api_mirrors_the_command(monkeypatch):
    records = _records(9)
    table = score_records(
        records, ["perplexity", "knn6"], models={"perplexity": "ngram"}, max_length=32
    )
    assert list(table.frame().columns) == ["id", "perplexity", "knn6"] and table.left_out == {}
    assert "reward" in score_records(records).left_out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InstructMiningError, match="--model"):
        score(records, profile="paper")
    with pytest.raises(ValueError, match="carry their own settings"):
        score(records, [Counted()], device="cpu")
