"""Stepwise and best-subset selection: statsmodels agreement, a textbook answer, synthetic truth."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from instructmining.errors import InstructMiningError
from instructmining.regression.stepwise import ols_stats, select_features

# The Hald cement data (Hald 1952; Woods, Steinour and Starke 1932): heat evolved (y) by 13
# cement mixtures against four ingredients. Draper & Smith, "Applied Regression Analysis"
# (3rd ed., Wiley 1998), work it through in the chapter on selecting the "best" regression
# equation: backward elimination drops X3 and then X4, and the stepwise procedure enters X4,
# X1, X2, then removes X4, both ending at  y = 52.58 + 1.468 X1 + 0.662 X2  (R² = 0.979).
HALD = pd.DataFrame(
    {
        "x1": [7, 1, 11, 11, 7, 11, 3, 1, 2, 21, 1, 11, 10],
        "x2": [26, 29, 56, 31, 52, 55, 71, 31, 54, 47, 40, 66, 68],
        "x3": [6, 15, 8, 8, 6, 9, 17, 22, 18, 4, 23, 9, 8],
        "x4": [60, 52, 20, 47, 33, 22, 6, 44, 22, 26, 34, 12, 12],
    },
    dtype=float,
)
HALD_Y = pd.Series(
    [78.5, 74.3, 104.3, 87.6, 95.9, 109.2, 102.7, 72.5, 93.1, 115.9, 83.8, 113.3, 109.4]
)


def synthetic(seed, n=60, noise=0.05):
    """Six candidate columns; the log loss depends on x0, x2 and x4 only."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"x{i}" for i in range(6)])
    y = 0.4 + 0.3 * X.x0 - 0.2 * X.x2 + 0.15 * X.x4 + rng.normal(scale=noise, size=n)
    return X, pd.Series(y)


@pytest.mark.parametrize("cols", [["x1", "x2", "x3", "x4"], ["x4"], ["x1", "x2"], []])
def test_ols_stats_equal_statsmodels(cols):
    res = ols_stats(HALD[cols].to_numpy(), HALD_Y.to_numpy())
    ref = sm.OLS(HALD_Y.to_numpy(), sm.add_constant(HALD[cols], has_constant="add")).fit()
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-9)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=1e-9)
    np.testing.assert_allclose(res.pvalues, ref.pvalues, rtol=1e-7, atol=1e-14)
    for name in ("llf", "aic", "bic"):
        assert getattr(res, name) == pytest.approx(getattr(ref, name), rel=1e-10)
    if cols:
        assert res.rsquared == pytest.approx(ref.rsquared, rel=1e-10)
        assert res.rsquared_adj == pytest.approx(ref.rsquared_adj, rel=1e-10)


def test_hald_textbook_models_verified_with_statsmodels():
    full = sm.OLS(HALD_Y, sm.add_constant(HALD)).fit()
    np.testing.assert_allclose(full.params, [62.4054, 1.5511, 0.5102, 0.1019, -0.1441], atol=5e-4)
    final = sm.OLS(HALD_Y, sm.add_constant(HALD[["x1", "x2"]])).fit()
    np.testing.assert_allclose(final.params, [52.5773, 1.4683, 0.6623], atol=5e-4)
    assert final.rsquared == pytest.approx(0.979, abs=5e-4)


def test_hald_backward_elimination_drops_x3_then_x4():
    sel = select_features(HALD, HALD_Y, direction="backward", remove=0.10)
    assert set(sel.features) == {"x1", "x2"}
    removed = [(s.action, s.variable) for s in sel.path[1:]]
    assert removed == [("remove", "x3"), ("remove", "x4")]
    assert sel.path[1].value == pytest.approx(0.896, abs=1e-3)  # p of x3 in the full model
    assert sel.path[2].value == pytest.approx(0.205, abs=1e-3)  # p of x4 given x1, x2


def test_hald_stepwise_enters_x4_x1_x2_then_removes_x4():
    sel = select_features(HALD, HALD_Y, direction="both", enter=0.10, remove=0.10)
    steps = [(s.action, s.variable) for s in sel.path[1:]]
    assert steps == [("add", "x4"), ("add", "x1"), ("add", "x2"), ("remove", "x4")]
    assert set(sel.features) == {"x1", "x2"}
    assert sel.path[3].value == pytest.approx(0.0517, abs=1e-4)  # x2 enters just over 0.05


def test_hald_forward_selection_keeps_x4():
    sel = select_features(HALD, HALD_Y, direction="forward", enter=0.10)
    assert sel.features == ("x4", "x1", "x2")
    # at enter = 0.05, x2 (p = 0.052) does not enter
    assert select_features(HALD, HALD_Y, direction="forward").features == ("x4", "x1")


def test_hald_best_subset_by_bic_is_x1_x2():
    sel = select_features(HALD, HALD_Y, method="best-subset", rank_by="bic")
    assert set(sel.features) == {"x1", "x2"}
    assert [len(s.features) for s in sel.path] == [1, 2, 3, 4]
    ref = sm.OLS(HALD_Y, sm.add_constant(HALD[["x1", "x2"]])).fit()
    assert sel.path[1].value == pytest.approx(ref.bic)
    by_r2 = select_features(HALD, HALD_Y, method="best-subset", rank_by="adj_r2")
    assert set(by_r2.features) == {"x1", "x2", "x4"}  # adjusted R² 0.9764 beats 0.9744


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    ("direction", "criterion"),
    [("forward", "bic"), ("backward", "bic"), ("both", "bic"), ("both", "pvalue")],
)
def test_synthetic_support_is_recovered(seed, direction, criterion):
    X, y = synthetic(seed)
    sel = select_features(X, y, direction=direction, criterion=criterion, enter=0.01, remove=0.05)
    assert set(sel.features) == {"x0", "x2", "x4"}


@pytest.mark.parametrize("criterion", ["pvalue", "bic"])
def test_pure_noise_column_is_rarely_selected(criterion):
    # A noise column passes a 5% test 5% of the time; over 20 fixed seeds that is about one.
    picked = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        n = 40
        X = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n)})
        y = pd.Series(1.0 + 0.5 * X.signal + rng.normal(scale=0.1, size=n))
        sel = select_features(X, y, criterion=criterion)
        assert "signal" in sel.features
        picked += "noise" in sel.features
    assert picked <= 3


def test_ic_path_values_decrease():
    X, y = synthetic(7)
    sel = select_features(X, y, direction="forward", criterion="aic")
    values = [s.value for s in sel.path]
    assert all(b < a for a, b in itertools.pairwise(values))
    assert sel.path[0].features == () and math.isfinite(values[0])


def test_nothing_selected_on_noise_only():
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(30, 3)), columns=["a", "b", "c"])
    y = pd.Series(rng.normal(size=30))
    assert select_features(X, y, enter=0.01).features == ()


def test_bad_settings():
    with pytest.raises(ValueError, match="'direction'"):
        select_features(HALD, HALD_Y, direction="sideways")
    with pytest.raises(ValueError, match="enter"):
        select_features(HALD, HALD_Y, enter=0.2, remove=0.1)
    wide = pd.DataFrame(np.random.default_rng(0).normal(size=(13, 16)))
    wide.columns = [f"c{i}" for i in range(16)]
    with pytest.raises(ValueError, match="at most 15"):
        select_features(wide, HALD_Y, method="best-subset")
    with pytest.raises(InstructMiningError, match="needs at least 19 datasets"):
        select_features(wide, HALD_Y, direction="backward")


def test_forward_never_leaves_fewer_than_two_residual_df():
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(6, 5)), columns=list("abcde"))
    y = pd.Series(X.sum(axis=1) + rng.normal(scale=1e-3, size=6))
    sel = select_features(X, y, direction="forward", enter=0.5, remove=0.9)
    assert len(sel.features) <= 6 - 3


@pytest.mark.parametrize("rank_by", ["bic", "aic", "adj_r2"])
def test_best_subset_equals_brute_force_with_statsmodels(rank_by):
    X, y = synthetic(11, n=25, noise=0.3)
    sel = select_features(X, y, method="best-subset", rank_by=rank_by)
    sign = -1 if rank_by == "adj_r2" else 1
    attr = {"bic": "bic", "aic": "aic", "adj_r2": "rsquared_adj"}[rank_by]
    for step in sel.path:
        size = len(step.features)
        fits = {
            cols: getattr(sm.OLS(y, sm.add_constant(X[list(cols)])).fit(), attr)
            for cols in itertools.combinations(X.columns, size)
        }
        best = min(fits, key=lambda c: sign * fits[c])
        assert set(step.features) == set(best)
        assert step.value == pytest.approx(fits[best], rel=1e-9)
