"""Size search and the selected-vs-baseline comparison (tiny study, tiny base)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from study_helpers import alpaca_rows, write_eval, write_sources

from instructmining.experiments import runner
from instructmining.experiments.compare import Comparison, compare_strategies, mean_interval
from instructmining.experiments.size_search import grid_sizes, search_sizes, size_search
from instructmining.experiments.study import create_study
from instructmining.records import make_record
from instructmining.regression import Rule

SMALL = {"max_length": 64, "epochs": 1, "batch_size": 8}
RULE = Rule(
    name="longer-is-better",
    intercept=0.3,
    coefficients={"output_length": -0.02},
    indicators={"output_length": {"name": "output_length"}},
)


def test_mean_interval_matches_scipy():
    x = [1.0, 2.0, 4.0, 3.5]
    mean, low, high = mean_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(np.mean(x))
    assert (low, high) == pytest.approx(ref)
    assert math.isnan(mean_interval([2.0])[1])


def test_paired_differences():
    runs = pd.DataFrame(
        {
            "strategy": ["rule"] * 3 + ["random"] * 3,
            "seed": [0, 1, 2] * 2,
            "eval_loss": [1.0, 1.1, 0.9, 1.2, 1.15, 1.0],
        }
    )
    (row,) = Comparison(runs, Path(".")).paired()
    assert row["difference"] == "rule - random"
    assert row["mean"] == pytest.approx(np.mean([-0.2, -0.05, -0.1]))
    assert row["wins"] == 3
    assert "| rule | 3 |" in Comparison(runs, Path(".")).markdown()


def test_grid_sizes_are_log_spaced_and_distinct():
    assert grid_sizes(10, 1000, 3) == [10, 100, 1000]
    assert grid_sizes(5, 5, 4) == [5]


def test_search_finds_the_minimum_within_budget():
    calls = []

    def loss(size):  # a double descent: a local minimum near 40, the global one near 700
        calls.append(size)
        x = math.log(size)
        return min((x - math.log(40)) ** 2 + 0.3, (x - math.log(700)) ** 2)

    losses = search_sizes(loss, 10, 5000, budget=10)
    assert len(calls) == len(set(calls)) <= 10
    best = min(losses, key=losses.get)
    assert 400 <= best <= 1200


def test_search_budget_is_checked():
    with pytest.raises(ValueError, match="'budget'"):
        search_sizes(lambda s: 1.0, 1, 10, 0)


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    create_study(
        tmp_path / "study",
        sources=write_sources(tmp_path / "src"),
        eval_paths=write_eval(tmp_path / "eval"),
        n_mixtures=1,
        size=12,
        seed=0,
        indicators=["input_length", "output_length"],
    )
    return tmp_path / "study"


def pool_records():
    rows = alpaca_rows(40, offset=100)
    return [make_record(r["instruction"], r["input"], r["output"]) for r in rows]


def test_compare_runs_every_strategy_and_resumes(study_dir, monkeypatch, tiny_causal_lm):
    settings = runner.settings_for(str(tiny_causal_lm), **SMALL)
    result = compare_strategies(study_dir, pool_records(), RULE, size=8, seeds=2, settings=settings)
    assert sorted(result.runs["strategy"].unique()) == ["longest", "random", "rule"]
    assert len(result.runs) == 6 and (result.runs["eval_loss"] > 0).all()
    # rule "longer output is better" picks the longest outputs, like the longest baseline
    rule_words = result.runs.query("strategy == 'rule'")["subset_mean_output_words"].iloc[0]
    longest_words = result.runs.query("strategy == 'longest'")["subset_mean_output_words"].iloc[0]
    assert rule_words == pytest.approx(longest_words)
    assert (result.folder / "summary.md").exists() and (result.folder / "runs.csv").exists()

    def boom(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", boom)
    again = compare_strategies(study_dir, pool_records(), RULE, size=8, seeds=2, settings=settings)
    assert again.runs["eval_loss"].tolist() == result.runs["eval_loss"].tolist()


def test_size_search_writes_curve_and_resumes(study_dir, monkeypatch, tiny_causal_lm):
    settings = runner.settings_for(str(tiny_causal_lm), **SMALL)
    found = size_search(study_dir, pool_records(), RULE, budget=3, min_size=4, settings=settings)
    assert len(found.curve) == 3
    assert found.best_size in set(found.curve["size"])
    assert len(found.subset) == found.best_size
    assert (found.folder / "curve.csv").exists() and (found.folder / "curve.png").exists()
    monkeypatch.setattr(
        "instructmining.experiments.size_search.train_and_evaluate",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-trained")),
    )
    again = size_search(study_dir, pool_records(), RULE, budget=3, min_size=4, settings=settings)
    assert again.best_size == found.best_size


def test_cli_compare_and_size_auto(study_dir, tmp_path, tiny_causal_lm):
    import json

    from click.testing import CliRunner

    from instructmining.cli import main

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(30, offset=200)))
    rule = tmp_path / "rule.json"
    RULE.save(rule)
    common = ["--base-model", str(tiny_causal_lm), "--epochs", "1", "--max-length", "64"]
    runner_ = CliRunner()
    result = runner_.invoke(
        main,
        [
            "study",
            "compare",
            str(study_dir),
            "--pool",
            str(pool),
            "--rule",
            str(rule),
            "--size",
            "6",
            "--seeds",
            "1",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| rule | 1 |" in result.output and "rule - random" in result.output
    out = tmp_path / "best.jsonl"
    result = runner_.invoke(
        main,
        [
            "select",
            str(pool),
            "--rule",
            str(rule),
            "--size",
            "auto",
            "--study",
            str(study_dir),
            "--budget",
            "2",
            "--min-size",
            "5",
            "-o",
            str(out),
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best size" in result.output
    best = int(result.output.split("best size ")[1].split()[0])
    assert len(out.read_text().splitlines()) == best
    result = runner_.invoke(
        main, ["select", str(pool), "--size", "auto", "-o", str(tmp_path / "x.jsonl")]
    )
    assert result.exit_code == 2 and "--size auto needs --rule and --study" in result.output
