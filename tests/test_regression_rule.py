"""The Rule: prediction by name, JSON round trip, the built-in paper rules, load_rule."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmining.errors import DataError, InstructMiningError, OutputExistsError
from instructmining.regression import BUILTIN_RULES, SCHEMA_VERSION, Rule, load_rule


def small_rule(**changes):
    base = {
        "name": "r",
        "intercept": 0.5,
        "coefficients": {"a": 2.0, "b": -1.0},
        "indicators": {"a": {"name": "a"}, "b": {"name": "b", "k": 6}},
    }
    base.update(changes)
    return Rule(**base)


def test_predict_by_name_any_column_order():
    rule = small_rule()
    table = pd.DataFrame({"b": [1.0, 0.0], "extra": ["x", "y"], "a": [0.0, 1.0]})
    np.testing.assert_allclose(rule.linear_predictor(table), [-0.5, 2.5])
    np.testing.assert_allclose(rule.predict(table), np.exp([-0.5, 2.5]))
    np.testing.assert_allclose(rule.predict({"a": [1.0], "b": [1.0]}), [math.exp(1.5)])
    raw = small_rule(target_transform="none")
    np.testing.assert_allclose(raw.predict(table), [-0.5, 2.5])


def test_predict_missing_columns_lists_them():
    with pytest.raises(KeyError, match=r"needs indicator column\(s\) a, b"):
        small_rule().predict(pd.DataFrame({"c": [1.0]}))


def test_nan_propagates_and_intercept_only_rule():
    assert np.isnan(small_rule().predict({"a": [np.nan], "b": [1.0]})[0])
    flat = Rule(name="flat", intercept=0.1, coefficients={})
    np.testing.assert_allclose(flat.predict(pd.DataFrame({"x": [1, 2, 3]})), [math.exp(0.1)] * 3)


def test_rule_is_frozen_and_validated():
    rule = small_rule()
    with pytest.raises(AttributeError):
        rule.intercept = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="target_transform"):
        small_rule(target_transform="sqrt")
    with pytest.raises(ValueError, match="no indicator configuration for b"):
        small_rule(indicators={"a": {"name": "a"}})
    with pytest.raises(ValueError, match="finite"):
        small_rule(intercept=math.nan)


names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), finite, st.text())


@st.composite
def rules(draw):
    coefs = draw(st.dictionaries(names, finite, max_size=6))
    params = {
        n: {"name": n, **draw(st.dictionaries(names, json_scalars, max_size=3))} for n in coefs
    }
    return Rule(
        name=draw(st.text(min_size=1, max_size=20)),
        intercept=draw(finite),
        coefficients=coefs,
        target=draw(names),
        target_transform=draw(st.sampled_from(["log", "none"])),
        indicators=params,
        standardization=draw(st.none() | st.dictionaries(names, json_scalars, max_size=3)),
        statistics=draw(st.dictionaries(names, json_scalars, max_size=5)),
        selection={"method": "stepwise", "path": [{"step": 0, "action": "start"}]},
        provenance=draw(st.dictionaries(names, json_scalars, max_size=3)),
        notes=draw(st.text(max_size=50)),
        citation=draw(st.text(max_size=20)),
    )


@given(rules())
@settings(max_examples=60, deadline=None)
def test_json_round_trip(rule):
    again = Rule.from_json(rule.to_json())
    assert again == rule
    assert again.to_json() == rule.to_json()


def test_save_load_and_overwrite(tmp_path):
    rule = small_rule(statistics={"r2": 0.5, "f_pvalue": math.nan})
    path = rule.save(tmp_path / "rule.json")
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and doc["kind"] == "instructmining.rule"
    assert doc["statistics"]["f_pvalue"] is None  # NaN is not JSON
    assert load_rule(path).coefficients == rule.coefficients
    with pytest.raises(OutputExistsError):
        rule.save(path)
    rule.save(path, overwrite=True)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  not json")
    with pytest.raises(DataError, match=r"bad.json, line 2: not valid JSON"):
        load_rule(bad)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**small_rule().to_dict(), "schema_version": 99}))
    with pytest.raises(DataError, match="newer than this package reads"):
        load_rule(newer)
    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps({"schema_version": 1, "name": "x"}))
    with pytest.raises(DataError, match="lacks field"):
        load_rule(lacking)
    with pytest.raises(KeyError, match="built-in: paper-v1, paper-v3"):
        load_rule("paper-v2")
    with pytest.raises(InstructMiningError):
        load_rule(tmp_path / "missing.json")


def test_builtin_paper_v1_prediction_by_hand():
    rule = load_rule("paper-v1")
    # 1.0694 - 0.1498*1.0 + 8.257e-5*200 - 0.9350*0.5 = 1.0694 - 0.1498 + 0.016514 - 0.4675
    eta = rule.linear_predictor({"reward": [1.0], "output_length": [200.0], "knn6": [0.5]})
    assert eta[0] == pytest.approx(0.468614, abs=1e-9)
    assert rule.predict({"reward": 1.0, "output_length": 200.0, "knn6": 0.5})[0] == pytest.approx(
        math.exp(0.468614)
    )
    assert rule.features == ("reward", "output_length", "knn6")
    assert rule.indicators["knn6"]["k"] == 6
    assert "all-mpnet-base-v2" in rule.indicators["knn6"]["model"] and "SentenceBERT" in rule.notes
    assert "LLaMA-7B" in rule.notes and "78 datasets" in rule.notes and "Vicuna" in rule.notes
    assert "arXiv:2307.06290" in rule.citation


def test_builtin_paper_v3_prediction_by_hand():
    rule = load_rule("paper-v3")
    row = {"reward": 2.0, "understandability": 0.9, "naturalness": 0.8, "coherence": 0.85}
    # 0.0274 - 0.0078*2 + 0.4421*0.9 - 0.3212*0.8 - 0.1520*0.85 = 0.02353
    assert rule.linear_predictor(row)[0] == pytest.approx(0.02353, abs=1e-9)
    # a better dataset by the rule (more natural) gets a lower predicted loss
    better = {**row, "naturalness": 0.95}
    assert rule.predict(better)[0] < rule.predict(row)[0]
    assert {p["model"] for n, p in rule.indicators.items() if n != "reward"} == {
        "MingZhong/unieval-dialog"
    }
    assert rule.indicators["reward"]["model"] == "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"
    assert (
        "LLaMA-2-7B" in rule.notes and "129 datasets" in rule.notes and "COLM 2024" in rule.citation
    )


def test_builtins_round_trip_and_summaries():
    for name in BUILTIN_RULES:
        rule = load_rule(name)
        assert Rule.from_json(rule.to_json()) == rule
        text = rule.summary()
        assert name in text and "Lower predicted loss is better" in text
        assert "<table>" in rule._repr_html_()
        assert "Fitted on:" in text  # every built-in rule says where it comes from
        assert "Fitted on:" in rule._repr_html_() and "Fitted range" in rule._repr_html_()
    assert "  base model: LLaMA-7B" in load_rule("paper-v1").summary()
