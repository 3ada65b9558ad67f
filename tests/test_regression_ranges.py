"""A rule's fitted range: recorded by a fit, kept through JSON, validated, shown."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmining.cli import main
from instructmining.errors import DataError
from instructmining.regression import FitWarning, Rule, fit_rule, load_rule

FEATURES = ["reward", "output_length", "knn6", "mtld"]


def table(n=30, seed=0):
    """Mean indicators per candidate dataset; log loss depends on reward and output_length."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "reward": rng.normal(1.0, 0.5, n),
            "output_length": rng.normal(150.0, 40.0, n),
            "knn6": rng.normal(0.6, 0.05, n),
            "mtld": rng.normal(60.0, 10.0, n),
        }
    )
    frame["eval_loss"] = np.exp(
        1.0 - 0.2 * frame.reward + 2e-3 * frame.output_length + rng.normal(0, 0.01, n)
    )
    return frame


def ranged_rule(**ranges):
    return Rule(
        name="r",
        intercept=0.1,
        coefficients={"a": 1.0, "b": -2.0},
        indicators={"a": {"name": "a"}, "b": {"name": "b"}},
        ranges=ranges,
    )


def test_fit_records_the_range_of_every_chosen_indicator():
    frame = table()
    rule = fit_rule(frame, features=FEATURES).rule
    assert set(rule.features) == {"reward", "output_length"}
    assert set(rule.ranges) == set(rule.features)
    for name in rule.features:
        r = rule.ranges[name]
        assert r["min"] == frame[name].min() and r["max"] == frame[name].max()
        assert r["mean"] == pytest.approx(frame[name].mean(), rel=1e-12)
        assert r["n"] == len(frame)
    assert rule.ranges_note == ""


def test_fit_range_counts_only_the_rows_used():
    frame = table()
    frame.loc[3, "output_length"] = np.nan
    with pytest.warns(FitWarning, match="missing values left out"):
        rule = fit_rule(frame, features=FEATURES, dropna=True).rule
    kept = frame.drop(index=3)
    assert rule.ranges["reward"]["n"] == len(kept)
    assert rule.ranges["reward"]["max"] == kept["reward"].max()


def test_ranges_round_trip_through_the_rule_file(tmp_path):
    rule = fit_rule(table(), features=FEATURES).rule
    path = rule.save(tmp_path / "rule.json")
    doc = json.loads(path.read_text())
    assert set(doc["ranges"]) == set(rule.features)
    assert set(doc["ranges"]["reward"]) == {"min", "mean", "max", "n"}
    loaded = load_rule(path)
    assert loaded == rule and loaded.ranges == rule.ranges


bounds = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=3, max_size=3
).map(sorted)


@given(a=bounds, b=bounds, n=st.integers(1, 10_000))
@settings(max_examples=40, deadline=None)
def test_json_round_trip_with_ranges(a, b, n):
    rule = ranged_rule(
        a={"min": a[0], "mean": a[1], "max": a[2], "n": n},
        b={"min": b[0], "mean": b[1], "max": b[2]},
    )
    again = Rule.from_json(rule.to_json())
    assert again == rule and again.ranges["a"]["n"] == n and "n" not in again.ranges["b"]


def test_an_old_rule_file_without_ranges_still_loads(tmp_path):
    doc = ranged_rule().to_dict()
    del doc["ranges"], doc["ranges_note"]  # what files written before ranges hold
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    rule = load_rule(path)
    assert rule.ranges == {} and rule.ranges_note == ""
    assert "Fitted range: not recorded." in rule.summary()
    doc["ranges"] = None
    path.write_text(json.dumps(doc))
    assert load_rule(path).ranges == {}


@pytest.mark.parametrize(
    ("ranges", "needle"),
    [
        ({"a": {"min": 3.0, "mean": 2.0, "max": 4.0}}, "min <= mean <= max"),
        ({"a": {"min": 1.0, "mean": 5.0, "max": 4.0}}, "min <= mean <= max"),
        ({"a": {"min": None, "mean": 2.0, "max": 4.0}}, "min must be a number"),
        ({"a": {"min": "1", "mean": 2.0, "max": 4.0}}, "min must be a number"),
        ({"a": {"min": 1.0, "mean": 2.0}}, "max must be a number"),
        ({"a": {"min": 1.0, "mean": 2.0, "max": math.inf}}, "max must be finite"),
        ({"a": {"min": 1.0, "mean": 2.0, "max": 3.0, "n": 0}}, "n must be a whole number"),
        ({"a": {"min": 1.0, "mean": 2.0, "max": 3.0, "n": 2.5}}, "n must be a whole number"),
        ({"a": {"min": 1.0, "mean": 2.0, "max": 3.0, "std": 1}}, "unknown field(s) std"),
        ({"a": [1.0, 2.0, 3.0]}, "must be an object"),
        ({"zeta": {"min": 1.0, "mean": 2.0, "max": 3.0}}, "does not use 'zeta'"),
        ([1, 2], "'ranges' must be an object"),
    ],
)
def test_a_corrupt_range_is_refused_in_one_line(tmp_path, ranges, needle):
    doc = ranged_rule().to_dict()
    doc["ranges"] = ranges
    path = tmp_path / "corrupt.json"
    path.write_text(json.dumps(doc))  # inf is written as Infinity, which json reads back
    with pytest.raises(DataError) as info:
        load_rule(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not a valid rule: ") and needle in message


def test_a_rule_built_in_code_checks_its_range_too():
    with pytest.raises(ValueError, match="min <= mean <= max"):
        ranged_rule(a={"min": 2.0, "mean": 1.0, "max": 3.0})
    rule = ranged_rule(a={"min": 1, "mean": 2, "max": 3, "n": 4.0})
    assert rule.ranges["a"] == {"min": 1.0, "mean": 2.0, "max": 3.0, "n": 4}
    assert isinstance(rule.ranges["a"]["n"], int)


def test_builtin_rules_say_the_paper_gives_no_range():
    for name, count in (("paper-v1", "78"), ("paper-v3", "129")):
        rule = load_rule(name)
        assert rule.ranges == {}
        assert "does not report the fitted range" in rule.ranges_note
        assert count in rule.ranges_note
        assert all(f in rule.ranges_note for f in rule.features)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_rule_show_prints_the_range_table(tmp_path):
    frame = table()
    frame.to_csv(tmp_path / "results.csv", index=False)
    rule_path = tmp_path / "rule.json"
    fitted = run("fit", tmp_path / "results.csv", "-o", rule_path, "--report", tmp_path / "rep")
    assert fitted.exit_code == 0, fitted.output
    rule = load_rule(rule_path)
    shown = run("rule", "show", rule_path)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.split("Fitted range")[1].splitlines()[1:]
    assert lines[0].split() == ["indicator", "min", "mean", "max", "n"]
    for name in rule.features:
        row = next(line for line in lines if line.strip().startswith(name + " "))
        r = rule.ranges[name]
        assert row.split()[1:] == [f"{r['min']:.4g}", f"{r['mean']:.4g}", f"{r['max']:.4g}", "30"]
    assert "## Fitted range" in (tmp_path / "rep" / "report.md").read_text()


def test_rule_show_prints_the_note_where_there_is_no_range(tmp_path):
    shown = run("rule", "show", "paper-v3")
    assert shown.exit_code == 0
    assert "Fitted range: not recorded." in shown.output
    assert "does not report the fitted range" in shown.output
    doc = ranged_rule().to_dict()
    del doc["ranges"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    shown = run("rule", "show", tmp_path / "old.json")
    assert shown.exit_code == 0 and "Fitted range: not recorded." in shown.output
