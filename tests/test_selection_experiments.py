"""Size search and the selected-vs-baseline comparison (tiny study, tiny base)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from study_helpers import alpaca_rows, write_eval, write_sources

from instructmining.errors import ParameterError
from instructmining.experiments import runner
from instructmining.experiments.compare import compare_strategies
from instructmining.experiments.comparison import Comparison, mean_interval
from instructmining.experiments.size_search import grid_sizes, search_sizes, size_search
from instructmining.experiments.study import create_study
from instructmining.records import make_record
from instructmining.regression import Rule
from instructmining.selection import FittedRangeWarning

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
    one = Comparison(runs[runs["seed"] == 0], Path(".")).markdown()
    assert "n/a (needs 2 seeds)" in one and "nan" not in one


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
    assert {"subset_mean_input_length", "subset_mean_output_length"} <= set(result.runs.columns)
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
    # no terminal, so no bars: one timestamped line per phase says where the run is
    phases = [ln.split(" ", 1)[1] for ln in result.output.splitlines() if ln[:2].isdigit()]
    assert phases[0].startswith("choosing the subset of rule"), phases
    assert any(p.startswith("random-seed0: trained in") for p in phases), phases
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


# --- strategies by indicator, rule-in-range, subset means (finetuning replaced by a stub) ---

RANGED_RULE = Rule(
    name="longer-is-better-ranged",
    intercept=0.3,
    coefficients={"output_length": -0.02},
    indicators={"output_length": {"name": "output_length"}},
    ranges={"output_length": {"min": 9.0, "mean": 10.0, "max": 11.0, "n": 12}},
)


class StubTraining:
    """Stands in for train_and_evaluate: keeps every subset; the loss falls with output length."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.subsets: list[list] = []
        self.stop_after = stop_after

    def __call__(self, base, records, eval_records, settings, **kwargs):
        if self.stop_after is not None and len(self.subsets) == self.stop_after:
            raise KeyboardInterrupt  # like a kill: not recorded as a failed run
        self.subsets.append(list(records))
        if kwargs.get("log"):
            kwargs["log"]("training")
        words = np.mean([len(r.output.split()) for r in records])
        return {
            "eval_loss": 3.0 - 0.1 * words + 0.01 * settings.train.seed,
            "train_responses_cut": sum(len(r.output.split()) > 10 for r in records),
            "train_target_tokens": sum(len(r.output.split()) for r in records),
        }


def by_strategy_sd(result):
    """Each strategy's sd of the eval loss over seeds, as the summary reports it."""
    return {r["strategy"]: r["sd"] for r in result.per_strategy()}


def by_length(records, *, highest):
    """Expected order: output words (highest or lowest first), ties by record id."""
    sign = -1 if highest else 1
    return sorted(records, key=lambda r: (sign * len(r.output.split()), r.id))


def test_parse_strategies_names_the_choices():
    from instructmining.errors import ParameterError
    from instructmining.experiments.compare import parse_strategies

    inds = ["input_length", "output_length"]
    assert parse_strategies(["rule", " top:output_length", "rule", ""], inds) == [
        "rule",
        "top:output_length",
    ]
    with pytest.raises(ParameterError, match=r"unknown strategy 'best'; choose from rule, "):
        parse_strategies(["best"], inds)
    with pytest.raises(
        ParameterError, match="'ifd' is not an indicator of the study; choose from "
    ):
        parse_strategies(["top:ifd"], inds)
    with pytest.raises(ParameterError, match="unknown strategy 'middle:output_length'"):
        parse_strategies(["middle:output_length"], inds)


@pytest.mark.filterwarnings("ignore::instructmining.selection.FittedRangeWarning")
def test_compare_indicator_strategies_means_and_resume(study_dir, monkeypatch, tiny_causal_lm):
    import json

    from instructmining.indicators.length import InputLength, OutputLength

    settings = runner.settings_for(str(tiny_causal_lm), **SMALL)
    pool = pool_records()
    strategies = ["rule", "rule-in-range", "top:output_length", "bottom:output_length", "random"]
    stub = StubTraining()
    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", stub)
    lines: list[str] = []
    with pytest.warns(FittedRangeWarning, match="subset mean output_length"):  # plain rule
        result = compare_strategies(
            study_dir,
            pool,
            RANGED_RULE,
            size=8,
            seeds=2,
            settings=settings,
            strategies=strategies,
            log=lines.append,
        )
    # one line per phase: every subset chosen, scored, then each run named as it trains
    assert lines[0] == "choosing the subset of rule (seed 0)"
    assert "scoring the 6 subsets on every study indicator" in lines  # random: one per seed
    digest = result.runs.loc[result.runs["strategy"] == "rule", "rule_digest"].iloc[0]
    assert [ln for ln in lines if ln.endswith(": training")][:3] == [
        f"rule@{digest}-seed0: training",
        f"rule-in-range@{digest}-seed0: training",
        "top:output_length-seed0: training",
    ]
    runs = result.runs
    assert runs["strategy"].tolist() == [s for s in strategies for _ in range(2)]
    # the stub saw the subsets seed by seed, every strategy of a seed before the next seed
    subset = {
        (s, seed): stub.subsets[seed * len(strategies) + i]
        for i, s in enumerate(strategies)
        for seed in (0, 1)
    }
    for (s, seed), records in subset.items():  # kept for analysis, one file per run
        tag = f"@{digest}" if s.startswith("rule") else ""
        path = result.folder / "subsets" / f"{s}{tag}-seed{seed}.json".replace(":", "_")
        assert json.loads(path.read_text()) == [r.id for r in records]
    top = subset[("top:output_length", 0)]
    assert [r.id for r in top] == [r.id for r in by_length(pool, highest=True)[:8]]
    assert [r.id for r in subset[("bottom:output_length", 0)]] == [
        r.id for r in by_length(pool, highest=False)[:8]
    ]
    # deterministic strategies do not depend on the seed; random does
    for s in strategies[:-1]:
        assert [r.id for r in subset[(s, 0)]] == [r.id for r in subset[(s, 1)]]
    assert {r.id for r in subset[("random", 0)]} != {r.id for r in subset[("random", 1)]}

    # subset_mean_<indicator> of every study indicator, correct for one run
    row = runs.query("strategy == 'top:output_length' and seed == 0").iloc[0]
    assert row["subset_mean_output_length"] == pytest.approx(
        np.mean([len(r.output.split()) for r in top])
    )
    assert row["subset_mean_input_length"] == pytest.approx(
        np.mean([len(r.instruction.split()) + len(r.input.split()) for r in top])
    )
    # the plain rule's top 8 leaves the fitted range; rule-in-range stays inside it
    means = runs.groupby("strategy")["subset_mean_output_length"].first()
    assert means["rule"] > 11.0
    assert 9.0 <= means["rule-in-range"] <= 11.0

    # tables: subset means per strategy, paired differences against random
    vs = {r["difference"]: r for r in result.versus()}
    assert set(vs) == {f"{s} - random" for s in strategies if s != "random"}
    assert vs["top:output_length - random"]["pairs"] == 2
    summary = (result.folder / "summary.md").read_text()
    assert "| strategy | input_length | output_length |" in summary
    assert "| top:output_length - random |" in summary and "beats random" in summary
    assert "| *rule's fitted range* |" in summary and "[9, 11]" in summary
    # beside each measured loss, what the rule predicts from the subset's means
    header = (
        "| strategy | runs | mean eval loss | 95% interval | sd over seeds | rule's prediction |"
    )
    assert header in summary
    # the noise figure: the stub's loss moves by 0.01 per seed on a fixed subset
    fixed = runs.query("strategy == 'top:output_length'")["eval_loss"]
    assert by_strategy_sd(result)["top:output_length"] == pytest.approx(fixed.std(ddof=1))
    assert by_strategy_sd(result)["top:output_length"] == pytest.approx(0.01 / math.sqrt(2))
    assert "for rule, rule-in-range, top:output_length, bottom:output_length the subset" in summary
    by_strategy = {r["strategy"]: r for r in result.per_strategy()}
    averaged = runs.groupby("strategy")["subset_mean_output_length"].mean()
    for s in strategies:
        want = math.exp(0.3 - 0.02 * averaged[s])
        assert by_strategy[s]["predicted_loss"] == pytest.approx(want)
    assert f"| {by_strategy['rule']['predicted_loss']:.4f} |" in summary
    # how many responses each strategy's runs trained on cut at max_length
    top = subset[("top:output_length", 0)]
    want_cut = sum(len(r.output.split()) > 10 for r in top)
    assert by_strategy["top:output_length"]["responses_cut"] == want_cut
    assert "| rule's prediction | responses cut at max length |" in summary
    # and how many response tokens they trained on (longer subsets: more of them)
    assert by_strategy["top:output_length"]["trained_tokens"] == sum(
        len(r.output.split()) for r in top
    )
    assert "| response tokens trained |" in summary
    # which indicator moved the rule's prediction against random, and by how much
    moved = {r["strategy"]: r for r in result.attribution()}
    assert set(moved) == set(strategies) - {"random"}
    gap = averaged["top:output_length"] - averaged["random"]
    assert moved["top:output_length"]["output_length"] == pytest.approx(-0.02 * gap)
    assert moved["top:output_length"]["total"] == pytest.approx(-0.02 * gap)
    assert "What moves the rule's prediction against random (log eval loss" in summary
    assert f"| top:output_length | {-0.02 * gap:+.4f} | {-0.02 * gap:+.4f} |" in summary
    doc = json.loads((result.folder / "summary.json").read_text())
    assert [r["strategy"] for r in doc["subset_means"]] == strategies
    assert doc["paired_vs_random"][0]["difference"] == "rule - random"
    assert doc["rule_attribution_vs_random"][0]["strategy"] == "rule"

    # a strategy added later runs alone (the others are shared), and a kill during it
    # resumes: finished runs are skipped, no score is computed again
    monkeypatch.setattr(
        "instructmining.experiments.compare.train_and_evaluate",
        StubTraining(stop_after=1),
    )
    more = [*strategies, "top:input_length"]
    with pytest.raises(KeyboardInterrupt):
        compare_strategies(
            study_dir, pool, RANGED_RULE, size=8, seeds=2, settings=settings, strategies=more
        )
    # the summary is rewritten after every run: the stopped comparison's says what it holds
    partial = (result.folder / "summary.md").read_text()
    assert partial.startswith(f"**Partial**: {2 * len(more) - 1} of {2 * len(more)} runs")
    assert "| top:input_length | 1 |" in partial
    doc = json.loads((result.folder / "summary.json").read_text())
    assert (doc["runs_done"], doc["runs_planned"], doc["complete"]) == (11, 12, False)
    # study status tells where the comparison stands
    from click.testing import CliRunner

    from instructmining.cli.app import main

    status = CliRunner().invoke(main, ["study", "status", str(study_dir)])
    assert status.exit_code == 0, status.output
    assert (
        f"compare {result.folder.name}: 11 of 12 runs done ({', '.join(more)}; 2 seeds); "
        "about 0.0 h left" in status.output
    )
    assert f"tables: {result.folder / 'summary.md'}" in status.output

    def no_scoring(self, records):
        raise AssertionError("a cached score was computed again")

    monkeypatch.setattr(InputLength, "score", no_scoring)
    monkeypatch.setattr(OutputLength, "score", no_scoring)
    resumed = StubTraining()
    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", resumed)
    again = compare_strategies(
        study_dir, pool, RANGED_RULE, size=8, seeds=2, settings=settings, strategies=more
    )
    assert len(resumed.subsets) == 1  # the second seed of top:input_length
    assert len(again.runs) == 2 * len(more)
    assert "Partial" not in (result.folder / "summary.md").read_text()
    assert json.loads((result.folder / "summary.json").read_text())["complete"] is True

    # a fixed strategy must give a later seed the records its finished runs trained on:
    # if the choice changed between sessions, the resume stops before any training
    kept = result.folder / "subsets" / "top_output_length-seed0.json"
    ids = json.loads(kept.read_text())
    outsider = next(r.id for r in pool if r.id not in ids)
    kept.write_text(json.dumps([*ids[:-1], outsider]))
    untouched = StubTraining()
    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", untouched)
    from instructmining.errors import InstructMiningError

    with pytest.raises(InstructMiningError, match="top:output_length subset chosen now differs"):
        compare_strategies(
            study_dir, pool, RANGED_RULE, size=8, seeds=3, settings=settings, strategies=more
        )
    assert untouched.subsets == []


def test_cli_compare_rejects_unknown_strategies(study_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from instructmining.cli import main

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(10, offset=200)))
    rule = tmp_path / "rule.json"
    RULE.save(rule)
    base = ["study", "compare", str(study_dir), "--pool", str(pool), "--rule", str(rule)]
    for spec, expected in (
        ("rule,best", "unknown strategy 'best'; choose from rule, rule-in-range, random"),
        ("top:ifd", "'ifd' is not an indicator of the study; choose from input_length"),
    ):
        result = CliRunner().invoke(main, [*base, "--size", "4", "--strategies", spec])
        assert result.exit_code == 2, result.output
        assert result.output.strip().count("\n") == 0 and expected in result.output
    # rule-in-range needs a rule with a fitted range
    result = CliRunner().invoke(main, [*base, "--size", "4", "--strategies", "rule-in-range"])
    assert result.exit_code == 2 and "fitted range" in result.output
    assert result.output.strip().count("\n") == 0
    # a subset size or a token budget: exactly one
    for extra in ([], ["--size", "4", "--tokens", "100"]):
        result = CliRunner().invoke(main, [*base, *extra])
        assert result.exit_code == 2 and "exactly one of --size K" in result.output


def test_compare_adds_strategies_and_rules_without_retraining_the_others(
    study_dir, monkeypatch, tiny_causal_lm
):
    settings = runner.settings_for(str(tiny_causal_lm), **SMALL)
    pool = pool_records()
    first = StubTraining()
    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", first)
    compare_strategies(
        study_dir, pool, RULE, size=8, seeds=2, settings=settings, strategies=["rule", "random"]
    )
    assert len(first.subsets) == 4
    # one more strategy: only its two runs train; the table shows the three asked for
    second = StubTraining()
    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", second)
    more = compare_strategies(
        study_dir,
        pool,
        RULE,
        size=8,
        seeds=2,
        settings=settings,
        strategies=["rule", "random", "longest"],
    )
    assert len(second.subsets) == 2
    assert sorted(more.runs["strategy"].unique()) == ["longest", "random", "rule"]
    # another rule: its rule runs train, random is shared; the old rule's runs are not shown
    third = StubTraining()
    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", third)
    other = compare_strategies(
        study_dir,
        pool,
        RANGED_RULE,
        size=8,
        seeds=2,
        settings=settings,
        strategies=["rule", "random"],
    )
    assert len(third.subsets) == 2 and len(other.runs) == 4
    assert other.folder == more.folder
    assert set(other.runs.query("strategy == 'rule'")["rule_digest"]) != set(
        more.runs.query("strategy == 'rule'")["rule_digest"]
    )


def test_compare_reports_a_rule_feature_outside_the_plan(study_dir, monkeypatch, tiny_causal_lm):
    # a rule fitted with `study fit --add-indicators`: its feature is not a study indicator
    from instructmining.indicators.registry import create

    rule = Rule(
        name="richer-is-better",
        intercept=0.3,
        coefficients={"mtld": -0.01},
        indicators={"mtld": create("mtld").params()},
    )
    settings = runner.settings_for(str(tiny_causal_lm), **SMALL)
    stub = StubTraining()
    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", stub)
    pool = pool_records()
    result = compare_strategies(
        study_dir, pool, rule, size=8, seeds=1, settings=settings, strategies=["rule", "random"]
    )
    runs = result.runs
    for name in ("input_length", "output_length", "mtld"):
        assert runs[f"subset_mean_{name}"].notna().all(), name
    for strategy, subset in zip(["rule", "random"], stub.subsets, strict=True):
        row = runs.query(f"strategy == '{strategy}'").iloc[0]
        want = np.nanmean(create("mtld").score(subset))
        assert row["subset_mean_mtld"] == pytest.approx(want)
    assert (
        "| strategy | input_length | output_length | mtld |"
        in (result.folder / "summary.md").read_text()
    )


def test_compare_tables_the_make_up_of_each_strategys_subsets(
    study_dir, monkeypatch, tiny_causal_lm
):
    from instructmining.errors import ParameterError

    rows = alpaca_rows(40, offset=100)
    pool = [
        make_record(
            r["instruction"],
            r["input"],
            r["output"],
            category="long" if len(r["output"].split()) > 12 else "short",
        )
        for r in rows
    ]
    settings = runner.settings_for(str(tiny_causal_lm), **SMALL)
    stub = StubTraining()
    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", stub)
    with pytest.raises(ParameterError, match="--by genre: the pool's rows have no field"):
        compare_strategies(study_dir, pool, RULE, size=8, seeds=2, settings=settings, by="genre")
    assert stub.subsets == []  # refused before any training
    result = compare_strategies(
        study_dir,
        pool,
        RULE,
        size=8,
        seeds=2,
        settings=settings,
        strategies=["longest", "random"],
        by="category",
    )
    by_run = {
        (s, seed): stub.subsets[2 * seed + i]
        for seed in (0, 1)
        for i, s in enumerate(["longest", "random"])
    }
    for strategy in ("longest", "random"):
        want: dict[str, float] = {}
        for seed in (0, 1):
            for r in by_run[(strategy, seed)]:
                cat = r.fields["category"]
                want[cat] = want.get(cat, 0.0) + 1 / 16
        assert result.composition[strategy] == pytest.approx(want)
        assert sum(result.composition[strategy].values()) == pytest.approx(1.0)
    summary = (result.folder / "summary.md").read_text()
    assert "Share of each `category` among a strategy's records" in summary
    assert "| strategy | long | short |" in summary


def test_time_left_counts_each_strategy_at_its_own_median():
    from types import SimpleNamespace

    from instructmining.experiments.compare import _time_left

    def run(strategy, wall):
        return SimpleNamespace(wall_s=wall, row={"strategy": strategy})

    done = [run("rule", 800.0), run("rule", 900.0), run("random", 400.0)]
    plan = {"strategies": ["rule", "random", "longest"], "seeds": 3}
    # rule: 1 left at 850; random: 2 at 400; longest: 3 at the median of every run (800)
    assert _time_left(done, plan, 6) == pytest.approx(850 + 2 * 400 + 3 * 800)
    # counts that do not add up (runs of another rule in the folder): the plain median
    assert _time_left(done, plan, 4) == pytest.approx(4 * 800)
    assert _time_left(done, plan, 0) is None and _time_left([], plan, 6) is None


def token_counts(base, pool, settings):
    """Each record's response tokens by id, as finetuning under `settings` trains on them."""
    from instructmining.experiments.compare import response_tokens

    resolved = runner.resolve_settings(settings, base)
    return dict(zip([r.id for r in pool], response_tokens(base, pool, resolved), strict=True))


def test_compare_with_an_equal_token_budget(study_dir, monkeypatch, tiny_causal_lm):
    settings = runner.settings_for(str(tiny_causal_lm), **SMALL)
    pool = pool_records()
    counts = token_counts(str(tiny_causal_lm), pool, settings)
    budget = 120
    stub = StubTraining()
    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", stub)
    strategies = ["longest", "random", "rule-in-range"]
    lines: list[str] = []
    result = compare_strategies(
        study_dir, pool, RANGED_RULE, tokens=budget, seeds=2, settings=settings,
        strategies=strategies, log=lines.append,
    )  # fmt: skip
    used = [sum(counts[r.id] for r in subset) for subset in stub.subsets]
    assert all(u <= budget for u in used) and min(used) > budget // 2
    sizes = dict(zip(result.runs["strategy"], result.runs["size"], strict=True))
    assert sizes["longest"] < sizes["random"]  # long records: fewer fit into the budget
    # longest: the longest prefix of its ranking that fits; one more record would not
    first = stub.subsets[0]
    ranked = sorted(pool, key=lambda r: -len(r.output.split()))
    assert {r.id for r in first} == {r.id for r in ranked[: len(first)]}
    assert used[0] + counts[ranked[len(first)].id] > budget
    # rule-in-range (not nested) is asked for sizes by bisection; it stays inside the range
    inside = stub.subsets[strategies.index("rule-in-range")]
    assert 9.0 <= np.mean([len(r.output.split()) for r in inside]) <= 11.0
    assert any(ln.startswith("longest: ") and f"of {budget} response tokens" in ln for ln in lines)
    summary = (result.folder / "summary.md").read_text()
    assert f"fit into {budget} response tokens" in summary and "| records |" in summary
    # its own folder: a size comparison of the same pool is another one
    by_size = compare_strategies(
        study_dir, pool, RANGED_RULE, size=8, seeds=1, settings=settings, strategies=["random"]
    )
    assert by_size.folder != result.folder and "| records |" not in by_size.markdown()

    monkeypatch.setattr(
        "instructmining.experiments.compare.train_and_evaluate",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-trained")),
    )
    again = compare_strategies(
        study_dir, pool, RANGED_RULE, tokens=budget, seeds=2, settings=settings,
        strategies=strategies,
    )  # fmt: skip
    assert again.runs["eval_loss"].tolist() == result.runs["eval_loss"].tolist()
    with pytest.raises(ParameterError, match="cannot choose even one record"):
        compare_strategies(study_dir, pool, RULE, tokens=1, seeds=1, settings=settings)
    with pytest.raises(ParameterError, match="exactly one of --size"):
        compare_strategies(study_dir, pool, RULE, size=8, tokens=50, settings=settings)


def test_a_token_budget_counts_what_finetuning_trains_on(study_dir, tiny_causal_lm):
    settings = runner.settings_for(str(tiny_causal_lm), **SMALL)
    pool = pool_records()
    result = compare_strategies(
        study_dir, pool, RULE, tokens=90, seeds=1, settings=settings, strategies=["longest"]
    )
    counts = token_counts(str(tiny_causal_lm), pool, settings)
    kept = json.loads(next((result.folder / "subsets").glob("longest*.json")).read_text())
    assert int(result.runs["train_target_tokens"].iloc[0]) == sum(counts[i] for i in kept) <= 90
