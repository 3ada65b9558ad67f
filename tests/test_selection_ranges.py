"""Selection and the rule's fitted range: the warning after choosing, and --within-range."""

import json
import random
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from instructmining.cli import main
from instructmining.errors import ParameterError
from instructmining.records import make_record
from instructmining.regression import Rule
from instructmining.selection import (
    FittedRangeWarning,
    RangeInfeasibleError,
    select,
    select_file,
)
from instructmining.selection.ranges import range_message, within_range_subset

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def pool(n=120, seed=0):
    rng = random.Random(seed)
    return [
        make_record(
            " ".join(rng.choices(WORDS, k=rng.randint(2, 8))) + f" task {i}",
            " ".join(rng.choices(WORDS, k=rng.randint(0, 20))),
            " ".join(rng.choices(WORDS, k=rng.randint(1, 40))),
        )
        for i in range(n)
    ]


def lengths(records):
    """The two length indicators, as indicators/length.py computes them."""
    return {
        "output_length": np.array([len(r.output.split()) for r in records], dtype=float),
        "input_length": np.array(
            [len(r.instruction.split()) + len(r.input.split()) for r in records], dtype=float
        ),
    }


def length_rule(ranges=None):
    """Long outputs and short inputs predict a low loss: its top k has extreme means."""
    return Rule(
        name="lengths",
        intercept=0.5,
        coefficients={"output_length": -0.01, "input_length": 0.004},
        indicators={
            "output_length": {"name": "output_length"},
            "input_length": {"name": "input_length"},
        },
        ranges=ranges or {},
    )


def pool_ranges(records, half_width=3.0):
    """A range around the pool's mean of each length: a random subset mostly falls inside."""
    out = {}
    for name, values in lengths(records).items():
        m = float(values.mean())
        out[name] = {"min": m - half_width, "mean": m, "max": m + half_width, "n": 40}
    return out


def write_pool(path, records):
    path.write_text(
        "".join(
            json.dumps({"instruction": r.instruction, "input": r.input, "output": r.output}) + "\n"
            for r in records
        )
    )
    return path


# --- the check after choosing --------------------------------------------------------


def test_select_warns_when_a_subset_mean_leaves_the_fitted_range():
    records = pool()
    rule = length_rule(pool_ranges(records))
    with pytest.warns(FittedRangeWarning) as caught:
        sel = select(records, rule, k=20)
    out_mean = lengths(records)["output_length"][sel.indices].mean()
    r = rule.ranges["output_length"]
    assert out_mean > r["max"]  # the top 20 by the rule have long outputs
    check = sel.range_check["output_length"]
    assert check["subset_mean"] == pytest.approx(out_mean) and check["inside"] is False
    expected = range_message("output_length", out_mean, r["min"], r["max"])
    assert expected in [str(w.message) for w in caught]
    assert expected in sel.range_warnings
    assert f"subset mean output_length {out_mean:.4g} is outside" in expected
    assert f"[{r['min']:.4g}, {r['max']:.4g}]" in expected


def test_no_warning_inside_the_range_and_none_without_a_range():
    records = pool()
    wide = {
        name: {"min": 0.0, "mean": 10.0, "max": 100.0} for name in ("output_length", "input_length")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error", FittedRangeWarning)
        sel = select(records, length_rule(wide), k=20)
        assert sel.range_warnings == [] and all(c["inside"] for c in sel.range_check.values())
        plain = select(records, length_rule(), k=20)
        assert plain.range_check == {} and plain.range_warnings == []


def test_message_shows_enough_digits_to_differ_from_the_bound():
    text = range_message("mtld", 48.00001, 35.1, 48.0)
    assert "48.00001" in text and "[35.1, 48]" in text


def test_cli_select_warns_on_stderr_and_in_the_selection_file(tmp_path):
    records = pool()
    data = write_pool(tmp_path / "pool.jsonl", records)
    rule_path = length_rule(pool_ranges(records)).save(tmp_path / "rule.json")
    out = tmp_path / "sub.jsonl"
    result = CliRunner().invoke(
        main, ["select", str(data), "--rule", str(rule_path), "-k", "20", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warned and all("is outside the rule's fitted range [" in w for w in warned)
    assert any(w.startswith("warning: subset mean output_length ") for w in warned)
    assert "UserWarning" not in result.output and "FittedRangeWarning" not in result.output
    meta = json.loads((tmp_path / "sub.jsonl.selection.json").read_text())
    assert [f"warning: {w}" for w in meta["range_warnings"]] == warned
    assert meta["range_check"]["output_length"]["inside"] is False
    assert "fitted range [" in result.stdout


def test_cli_select_notes_a_rule_without_a_range(tmp_path):
    records = pool(30)
    data = write_pool(tmp_path / "pool.jsonl", records)
    rule_path = length_rule().save(tmp_path / "rule.json")
    result = CliRunner().invoke(
        main,
        ["select", str(data), "--rule", str(rule_path), "-k", "5", "-o", str(tmp_path / "s.jsonl")],
    )
    assert result.exit_code == 0, result.output
    assert "records no fitted range" in result.stderr


# --- within-range selection ----------------------------------------------------------


def predicted(rule, records, rows):
    return float(np.mean(rule.linear_predictor(lengths(records))[np.asarray(rows)]))


def inside(rule, records, rows):
    cols = lengths(records)
    return all(
        r["min"] <= cols[name][np.asarray(rows)].mean() <= r["max"]
        for name, r in rule.ranges.items()
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_within_range_keeps_every_mean_inside_and_prefers_rule_better_records(seed):
    records = pool(150, seed)
    rule = length_rule(pool_ranges(records))
    k = 25
    with warnings.catch_warnings():
        warnings.simplefilter("error", FittedRangeWarning)  # a warning here fails the test
        sel = select(records, rule, k=k, within_range=True)
    assert len(sel.indices) == k and len(set(sel.indices.tolist())) == k
    assert inside(rule, records, sel.indices) and sel.range_warnings == []
    assert 0 < sel.range_swaps <= k
    assert sel.settings["within_range"] is True
    # best-ranked first, as every selection
    ranks = sel.scores.loc[sel.indices, "rank"].to_numpy()
    assert np.all(np.diff(ranks) > 0)
    # better (lower) predicted loss than random subsets that also lie inside the range
    rng = np.random.default_rng(seed)
    feasible = [
        predicted(rule, records, rows)
        for rows in (rng.choice(len(records), k, replace=False) for _ in range(400))
        if inside(rule, records, rows)
    ]
    assert len(feasible) >= 100
    ours = predicted(rule, records, sel.indices)
    assert ours < np.median(feasible)
    assert np.mean(np.array(feasible) < ours) < 0.05  # greedy: now and then one is better
    # and no better than the unconstrained top k, which lies outside
    top = select(records, length_rule(), k=k)
    assert predicted(rule, records, top.indices) <= predicted(rule, records, sel.indices)


def test_within_range_is_deterministic_and_ignores_the_input_order():
    records = pool(150)
    rule = length_rule(pool_ranges(records))
    a = select(records, rule, k=25, within_range=True)
    b = select(records, rule, k=25, within_range=True)
    assert list(a.indices) == list(b.indices)
    perm = list(range(len(records)))
    random.Random(5).shuffle(perm)
    shuffled = [records[i] for i in perm]
    c = select(shuffled, rule, k=25, within_range=True)
    assert [records[i].id for i in a.indices] == [shuffled[i].id for i in c.indices]


def test_within_range_keeps_the_top_k_when_it_is_inside_already():
    records = pool()
    wide = {n: {"min": 0.0, "mean": 10.0, "max": 100.0} for n in ("output_length", "input_length")}
    sel = select(records, length_rule(wide), k=20, within_range=True)
    assert list(sel.indices) == list(select(records, length_rule(), k=20).indices)
    assert sel.range_swaps == 0


def test_swap_removes_the_lowest_ranked_worst_record_for_the_best_ranked_fitting_one():
    # one indicator, rows ranked 0..5; top 3 = rows 0, 1, 2 with mean 5/3 < 2
    values = np.array([[0.0], [0.0], [5.0], [1.0], [3.0], [2.5]])
    chosen, swaps = within_range_subset(np.arange(6), values, [2.0], [10.0], 3, ["x"])
    # rows 0 and 1 are the worst (0); row 1 ranks lower. Row 3 (1) cannot lift the mean
    # to the range's side; row 4 is the best-ranked record at or above 2
    assert chosen.tolist() == [0, 2, 4] and swaps == 1


def test_swap_never_pushes_another_mean_out():
    values = np.array([[0.0, 1.0], [0.0, 1.0], [5.0, 1.0], [1.0, 1.0], [3.0, 100.0], [4.0, 1.0]])
    chosen, swaps = within_range_subset(
        np.arange(6), values, [2.0, 0.0], [10.0, 10.0], 3, ["x", "y"]
    )
    # row 4 would fix x but carry y's mean to 34; row 5 fixes x and leaves y inside
    assert chosen.tolist() == [0, 2, 5] and swaps == 1


def test_no_partner_that_keeps_the_others_inside_is_a_clear_error():
    values = np.array([[0.0, 1.0], [0.0, 1.0], [5.0, 1.0], [1.0, 1.0], [3.0, 100.0]])
    with pytest.raises(RangeInfeasibleError) as info:
        within_range_subset(np.arange(5), values, [2.0, 0.0], [10.0, 10.0], 3, ["x", "y"])
    message = str(info.value)
    assert "subset mean x 1.667 is below the rule's fitted range [2, 10]" in message
    assert "without pushing another mean out (after 0 swaps of 3 records)" in message


def test_records_without_a_value_are_never_swapped_in():
    values = np.array([[0.0], [0.0], [np.nan], [9.0], [4.0]])
    chosen, _ = within_range_subset(np.arange(5), values, [1.0], [10.0], 2, ["x"])
    assert 2 not in chosen.tolist()
    assert chosen.tolist() == [0, 3]


def test_several_indicators_may_take_more_than_k_swaps():
    # the top 40 by this score sit far outside on two indicators: repairing both takes
    # more swaps than records, which the default limit (k per ranged indicator) allows
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2000, 3)) * [10, 5, 1] + [40, 100, 0.5]
    order = np.argsort(values @ np.array([0.05, -0.01, 1.0]), kind="stable")
    lower, upper = [38, 95, 0.4], [45, 105, 0.6]
    chosen, swaps = within_range_subset(order, values, lower, upper, 40, ["a", "b", "c"])
    assert swaps > 40 and len(chosen) == 40
    means = values[chosen].mean(axis=0)
    assert np.all(means >= lower) and np.all(means <= upper)


def test_infeasible_range_is_a_clear_error():
    records = pool()
    far = {"output_length": {"min": 500.0, "mean": 600.0, "max": 700.0}}
    with pytest.raises(RangeInfeasibleError) as info:
        select(records, length_rule(far), k=10, within_range=True)
    message = str(info.value)
    assert "\n" not in message and "output_length" in message and "[500, 700]" in message
    assert info.value.exit_code == 2


def test_swap_limit():
    # two swaps of a 0 for a 3 lift the mean of three records from 0 to 2
    values = np.array([[0.0], [0.0], [0.0], [3.0], [3.0], [3.0]])
    chosen, swaps = within_range_subset(np.arange(6), values, [2.0], [3.0], 3, ["x"])
    assert chosen.tolist() == [0, 3, 4] and swaps == 2
    with pytest.raises(
        RangeInfeasibleError, match=r"after 1 swaps \(the limit\) the subset mean x 1 is"
    ):
        within_range_subset(np.arange(6), values, [2.0], [3.0], 3, ["x"], max_swaps=1)


def test_within_range_needs_a_rule_with_a_range_and_the_rule_strategy():
    records = pool(30)
    with pytest.raises(ParameterError, match="records none"):
        select(records, length_rule(), k=5, within_range=True)
    ranged = length_rule(pool_ranges(records))
    with pytest.raises(ParameterError, match="rule strategy"):
        select(records, ranged, k=5, within_range=True, strategy="random")
    with pytest.raises(ParameterError, match="does not combine with 'diversity'"):
        select(records, ranged, k=5, within_range=True, diversity=0.9)
    with pytest.raises(ParameterError, match="takes k or fraction"):
        select(records, ranged, max_predicted_loss=2.0, within_range=True)


def test_select_file_refuses_within_range_before_reading_data(tmp_path):
    with pytest.raises(ParameterError, match="records none"):
        select_file(tmp_path / "missing.jsonl", tmp_path / "o.jsonl", rule=length_rule(),
                    k=5, within_range=True)  # fmt: skip


def test_cli_within_range(tmp_path):
    records = pool(150)
    data = write_pool(tmp_path / "pool.jsonl", records)
    rule = length_rule(pool_ranges(records))
    rule_path = rule.save(tmp_path / "rule.json")
    out = tmp_path / "inside.jsonl"
    args = ["select", str(data), "--rule", str(rule_path), "-k", "25"]
    result = CliRunner().invoke(main, [*args, "--within-range", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output and "swaps kept the subset inside" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kept = [make_record(r["instruction"], r["input"], r["output"]) for r in rows]
    assert len(kept) == 25 and inside(rule, kept, np.arange(25))
    meta = json.loads((tmp_path / "inside.jsonl.selection.json").read_text())
    assert meta["settings"]["within_range"] is True and meta["within_range_swaps"] > 0

    far = length_rule({"output_length": {"min": 500.0, "mean": 600.0, "max": 700.0}})
    far_path = far.save(tmp_path / "far.json")
    bad = CliRunner().invoke(
        main,
        ["select", str(data), "--rule", str(far_path), "-k", "25", "--within-range", "-o",
         str(tmp_path / "none.jsonl")],
    )  # fmt: skip
    assert bad.exit_code == 2
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "output_length" in lines[0]
    assert not (tmp_path / "none.jsonl").exists()

    plain = CliRunner().invoke(
        main,
        ["select", str(data), "--rule", "paper-v1", "-k", "5", "--within-range", "-o",
         str(tmp_path / "p.jsonl")],
    )  # fmt: skip
    assert plain.exit_code == 2 and "records none" in plain.output


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--strategy", "top:ifd"], "--within-range works with --strategy rule"),
        (["--strategy", "random", "--size", "auto"], "--within-range works with --strategy rule"),
        (["--diversity", "0.9"], "does not combine with --diversity"),
    ],
)
def test_cli_within_range_misuse_names_the_flags(tmp_path, extra, says):
    records = pool(30)
    data = write_pool(tmp_path / "pool.jsonl", records)
    rule_path = length_rule(pool_ranges(records)).save(tmp_path / "rule.json")
    out = tmp_path / "out.jsonl"
    args = ["select", str(data), "--rule", str(rule_path), "--within-range", "-o", str(out)]
    k = [] if "auto" in extra else ["-k", "5"]
    result = CliRunner().invoke(main, [*args, *k, *extra])
    assert result.exit_code == 2 and says in result.output, result.output
    assert "'within_range'" not in result.output and not out.exists()

    no_rule = CliRunner().invoke(main, ["select", str(data), "-k", "5", "--within-range",
                                        "-o", str(out)])  # fmt: skip
    assert no_rule.exit_code == 2 and "--within-range needs --rule" in no_rule.output


def _own_knn6(records, rows):
    """knn6 of a subset among its own records (as a study scores a candidate)."""
    from instructmining.indicators.engine import score
    from instructmining.indicators.registry import create

    return float(np.nanmean(score([records[i] for i in rows], [create("knn6")])["knn6"]))


def test_a_set_level_indicator_is_checked_and_kept_in_range_by_its_own_value(tmp_path):
    # knn6 (offline: TF-IDF + SVD fitted on the set scored) of a subset among itself is
    # not the mean of its records' values among the whole pool; the fitted range holds
    # candidates' own values, so selection must compare those
    from instructmining.indicators.engine import score
    from instructmining.indicators.registry import create

    records = pool(120)
    column = score(records, [create("knn6")])["knn6"].to_numpy()
    rng = np.random.default_rng(0)
    owns = [_own_knn6(records, rng.choice(120, 20, replace=False)) for _ in range(20)]
    low, high = float(np.quantile(owns, 0.25)), float(np.quantile(owns, 0.75))
    rule = Rule(
        name="diverse",
        intercept=1.0,
        coefficients={"knn6": -0.1},
        indicators={"knn6": create("knn6").params()},
        ranges={"knn6": {"min": low, "mean": float(np.median(owns)), "max": high, "n": 20}},
    )
    with pytest.warns(FittedRangeWarning):
        top = select(records, rule, k=20)
    check = top.range_check["knn6"]
    assert check["subset_mean"] == pytest.approx(_own_knn6(records, top.indices))
    assert check["pool_column_mean"] == pytest.approx(column[top.indices].mean())
    assert check["subset_mean"] != pytest.approx(check["pool_column_mean"], rel=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FittedRangeWarning)
        kept = select(records, rule, k=20, strategy="rule-in-range")
    own = _own_knn6(records, kept.indices)
    assert low <= own <= high and kept.range_check["knn6"]["inside"] is True
    # bounds applied to the pool column instead would have judged another subset
    assert not low <= column[kept.indices].mean() <= high
    # the command line prints the subset's own value beside the pool-column means
    data = write_pool(tmp_path / "pool.jsonl", records)
    rule_path = rule.save(tmp_path / "rule.json")
    out = tmp_path / "sub.jsonl"
    args = ["select", str(data), "--rule", str(rule_path), "-k", "20", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--no-cache"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith("knn6"))
    assert f"within the subset {check['subset_mean']:.4g}" in line
    meta = json.loads((tmp_path / "sub.jsonl.selection.json").read_text())
    assert meta["range_check"]["knn6"]["pool_column_mean"] == pytest.approx(
        check["pool_column_mean"]
    )
