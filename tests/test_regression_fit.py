"""fit_rule: agreement with a direct statsmodels fit, diagnostics, univariate view, bad input."""

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.outliers_influence import variance_inflation_factor

from instructmining.errors import DataError, OutputExistsError
from instructmining.regression import FitWarning, fit_rule
from instructmining.regression.diagnostics import kfold_rmse, loo_rmse, vif

FEATURES = ["reward", "output_length", "knn6", "mtld"]


def table(seed=0, n=40, noise=0.03):
    """Mean indicators per dataset; log loss depends on reward, output_length and knn6."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "candidate_id": [f"c{i:02d}" for i in range(n)],
            "reward": rng.normal(1.0, 0.5, n),
            "output_length": rng.normal(150.0, 40.0, n),
            "knn6": rng.normal(0.6, 0.05, n),
            "mtld": rng.normal(60.0, 10.0, n),
            "source": "mixture",
        }
    )
    log_loss = (
        1.07
        - 0.15 * frame.reward
        + 8e-4 * frame.output_length
        - 0.9 * frame.knn6
        + rng.normal(0, noise, n)
    )
    frame["eval_loss"] = np.exp(log_loss)
    return frame


def direct(frame, cols, target=None):
    y = np.log(frame.eval_loss) if target is None else target
    return sm.OLS(y.to_numpy(), sm.add_constant(frame[cols], has_constant="add")).fit()


def test_all_features_equal_direct_statsmodels_fit():
    frame = table()
    result = fit_rule(frame, features=FEATURES, method="all")
    ref = direct(frame, FEATURES)
    rule = result.rule
    assert rule.intercept == pytest.approx(ref.params["const"], rel=1e-10)
    for f in FEATURES:
        assert rule.coefficients[f] == pytest.approx(ref.params[f], rel=1e-9)
        cs = rule.statistics["coefficients"][f]
        assert cs["std_error"] == pytest.approx(ref.bse[f], rel=1e-9)
        assert cs["p_value"] == pytest.approx(ref.pvalues[f], rel=1e-7)
        lo, hi = ref.conf_int().loc[f]
        assert (cs["ci_low"], cs["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    s = rule.statistics
    assert s["n"] == 40 and s["k"] == 4
    for key, value in [
        ("r2", ref.rsquared),
        ("adj_r2", ref.rsquared_adj),
        ("f_pvalue", ref.f_pvalue),
        ("aic", ref.aic),
        ("bic", ref.bic),
    ]:
        assert s[key] == pytest.approx(value, rel=1e-9)
    np.testing.assert_allclose(rule.linear_predictor(frame), ref.fittedvalues, rtol=1e-10)


def test_stepwise_recovers_support_and_refits():
    frame = table(seed=3)
    result = fit_rule(frame, features=FEATURES)
    assert set(result.rule.features) == {"reward", "output_length", "knn6"}
    ref = direct(frame, list(result.rule.features))
    for f in result.rule.features:
        assert result.rule.coefficients[f] == pytest.approx(ref.params[f], rel=1e-9)
    path = result.rule.selection["path"]
    assert path[0]["action"] == "start" and [p["variable"] for p in path[1:]] == list(
        result.rule.features
    )
    assert result.rule.selection["direction"] == "both"
    assert result.rule.selection["candidates"] == FEATURES


def test_standardized_fit_reports_both_scales():
    frame = table(seed=1)
    plain = fit_rule(frame, features=FEATURES, method="all")
    std = fit_rule(frame, features=FEATURES, method="all", standardize=True)
    assert std.rule.coefficients == pytest.approx(plain.rule.coefficients)
    block = std.rule.standardization
    z = (frame[FEATURES] - frame[FEATURES].mean()) / frame[FEATURES].std(ddof=1)
    ref = sm.OLS(np.log(frame.eval_loss), sm.add_constant(z)).fit()
    for f in FEATURES:
        assert block["coefficients"][f] == pytest.approx(ref.params[f], rel=1e-9)
        assert block["coefficients"][f] == pytest.approx(
            plain.rule.coefficients[f] * block["scale"][f], rel=1e-9
        )
    assert block["intercept"] == pytest.approx(np.log(frame.eval_loss).mean())
    assert "standardized" in std.coefficients.columns


def test_raw_target_transform():
    frame = table(seed=2)
    result = fit_rule(frame, features=["reward"], target_transform="none", method="all")
    ref = direct(frame, ["reward"], target=frame.eval_loss)
    assert result.rule.coefficients["reward"] == pytest.approx(ref.params["reward"])
    np.testing.assert_allclose(result.rule.predict(frame), ref.fittedvalues)


def test_cross_validation_and_vif_match_direct_computation():
    frame = table(seed=4, n=25)
    X, y = frame[FEATURES], np.log(frame.eval_loss)
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        fit = sm.OLS(y[keep], sm.add_constant(X[keep])).fit()
        errors.append(y[i] - fit.predict(sm.add_constant(X, has_constant="add").iloc[[i]])[i])
    assert loo_rmse(X, y) == pytest.approx(np.sqrt(np.mean(np.square(errors))), rel=1e-9)
    design = sm.add_constant(X).to_numpy()
    for j, f in enumerate(FEATURES, start=1):
        assert vif(X)[f] == pytest.approx(variance_inflation_factor(design, j), rel=1e-9)
    # k = n folds is leave-one-out
    assert kfold_rmse(X, y, k=len(y)) == pytest.approx(loo_rmse(X, y), rel=1e-9)
    result = fit_rule(frame, features=FEATURES, method="all")
    s = result.rule.statistics
    assert s["loo_rmse"] == pytest.approx(loo_rmse(X, y))
    assert s["baseline_loo_rmse"] > s["loo_rmse"]  # the rule beats the mean
    assert s["cv_folds"] == 5 and s["kfold_selection_rmse"] is None


def test_univariate_correlations_and_bins():
    frame = table(seed=5, n=30)
    frame["bin_indicator"] = ["reward"] * 10 + [None] * 20
    frame["bin"] = list(range(5)) * 2 + [None] * 20
    result = fit_rule(frame, features=FEATURES)
    uni = result.univariate.set_index("indicator")
    y = np.log(frame.eval_loss)
    for f in FEATURES:
        r, p = stats.pearsonr(frame[f], y)
        rho, _ = stats.spearmanr(frame[f], y)
        assert uni.loc[f, "pearson_r"] == pytest.approx(r)
        assert uni.loc[f, "pearson_p"] == pytest.approx(p)
        assert uni.loc[f, "spearman_rho"] == pytest.approx(rho)
        assert uni.loc[f, "pearson_ci_low"] < r < uni.loc[f, "pearson_ci_high"]
        assert uni.loc[f, "spearman_ci_low"] < rho < uni.loc[f, "spearman_ci_high"]
    # Fisher z interval by hand for one indicator
    r = uni.loc["reward", "pearson_r"]
    half = 1.959963984540054 / np.sqrt(30 - 3)
    assert uni.loc["reward", "pearson_ci_low"] == pytest.approx(np.tanh(np.arctanh(r) - half))
    bins = result.bins
    assert list(bins["bin"]) == [0, 1, 2, 3, 4] and set(bins["datasets"]) == {2}
    first = frame[frame["bin"] == 0]
    assert bins["mean_target"].iloc[0] == pytest.approx(np.log(first.eval_loss).mean())


def test_univariate_design_from_a_study_table():
    frame = table(seed=6, n=20)
    frame["kind"] = ["univariate"] * 8 + ["mixture"] * 12
    frame["indicator"] = ["mtld"] * 8 + [None] * 12
    frame["bin"] = [0, 0, 1, 1, 2, 2, 3, 3] + [None] * 12
    bins = fit_rule(frame, features=FEATURES).bins
    assert list(bins["bin_indicator"].unique()) == ["mtld"] and len(bins) == 4


def test_indicator_params_and_provenance():
    frame = table()
    params = {"reward": {"name": "reward", "model": "some/rm", "backend": "hf", "version": 1}}
    rule = fit_rule(
        frame, features=["reward", "knn6"], method="all", indicators=params, source="x.csv"
    ).rule
    assert rule.indicators["reward"]["model"] == "some/rm"
    assert rule.indicators["knn6"] == {"name": "knn6"}
    assert rule.provenance["source"] == "x.csv" and rule.name == "fitted-x"
    assert "names only" in rule.provenance["indicator_configuration"]
    assert rule.provenance["rows_used"] == 40 and rule.provenance["package_version"]


def test_too_few_rows_says_how_many_are_needed():
    frame = table(n=5)
    with pytest.raises(DataError, match=r"at least 7 are needed"):
        fit_rule(frame, features=FEATURES, method="all")
    with pytest.raises(DataError, match=r"2 dataset\(s\) is too few.*at least 4"):
        fit_rule(table(n=2), features=FEATURES)


def test_constant_and_all_nan_columns_are_dropped_with_a_warning():
    frame = table()
    frame["flat"] = 3.0
    frame["empty"] = np.nan
    with pytest.warns(FitWarning) as record:
        result = fit_rule(frame, features=[*FEATURES, "flat", "empty"], method="all")
    messages = " ".join(str(w.message) for w in record)
    assert (
        "'flat' dropped: constant" in messages and "'empty' dropped: all values missing" in messages
    )
    assert (
        "flat" not in result.rule.features and "empty" in result.rule.provenance["features_dropped"]
    )


def test_nan_rows_error_names_them_unless_dropna():
    frame = table()
    frame.loc[[3, 17], "reward"] = np.nan
    with pytest.raises(DataError, match=r"candidate_id=c03, candidate_id=c17 \(columns reward\)"):
        fit_rule(frame, features=FEATURES, source="t.csv")
    with pytest.warns(FitWarning, match="2 row"):
        result = fit_rule(frame, features=FEATURES, dropna=True)
    assert result.rule.statistics["n"] == 38
    assert result.rule.provenance["rows_dropped"] == ["candidate_id=c03", "candidate_id=c17"]


def test_non_positive_loss_with_log_target():
    frame = table().drop(columns="candidate_id")
    frame.loc[4, "eval_loss"] = 0.0
    with pytest.raises(
        DataError, match=r"t.csv: column 'eval_loss' has non-positive losses in row 5"
    ):
        fit_rule(frame, features=FEATURES, source="t.csv")
    fit_rule(frame, features=FEATURES, target_transform="none")


def test_collinear_indicator_warns_and_keeps_the_earlier():
    frame = table()
    frame["reward_copy"] = 2 * frame.reward + 1
    frame["combo"] = frame.knn6 - frame.mtld / 100
    with pytest.warns(FitWarning, match="perfectly collinear") as record:
        result = fit_rule(frame, features=[*FEATURES, "reward_copy", "combo"], method="all")
    assert set(result.rule.features) == set(FEATURES)
    dropped = result.rule.provenance["features_dropped"]
    assert "reward" in dropped["reward_copy"] and "knn6, mtld" in dropped["combo"]
    assert len(record) >= 2
    # stable: the order of the columns decides, the first of a collinear pair stays
    with pytest.warns(FitWarning, match="'reward' dropped"):
        again = fit_rule(frame, features=["reward_copy", "reward", "knn6"], method="all")
    assert again.rule.features == ("reward_copy", "knn6")


def test_missing_and_non_numeric_columns():
    frame = table()
    with pytest.raises(DataError, match=r"missing column.*nope"):
        fit_rule(frame, features=["reward", "nope"])
    with pytest.raises(DataError, match=r"missing column.*loss"):
        fit_rule(frame, features=["reward"], loss="loss")
    with pytest.raises(DataError, match="'source' is not numeric"):
        fit_rule(frame, features=["reward", "source"])


def test_noise_only_gives_intercept_rule_with_warning():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20, 2)), columns=["a", "b"])
    frame["eval_loss"] = np.exp(rng.normal(size=20))
    with pytest.warns(FitWarning, match="intercept only"):
        result = fit_rule(frame, features=["a", "b"], enter=0.001)
    assert result.rule.features == ()
    assert result.rule.intercept == pytest.approx(np.log(frame.eval_loss).mean())


def test_report_summary_and_html(tmp_path):
    frame = table(seed=8)
    frame["bin_indicator"] = "reward"
    frame["bin"] = np.arange(40) % 4
    result = fit_rule(frame, features=FEATURES, standardize=True)
    report = result.write_report(tmp_path / "rep")
    text = report.read_text()
    for heading in (
        "## Coefficients",
        "## Selection path",
        "## Cross-validated error",
        "## Univariate analysis",
        "### Loss per bin",
    ):
        assert heading in text
    for png in ("predicted_vs_observed", "residuals", "coefficients", "univariate", "bins"):
        data = (tmp_path / "rep" / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"({png}.png)" in text
    with pytest.raises(OutputExistsError):
        result.write_report(tmp_path / "rep")
    summary = result.summary()
    assert "Selection path" in summary and "leave-one-out" in summary
    assert "<pre>" in result._repr_html_()
    # the rule's own card (rule show) sets its cross-validated error against intercept only
    stats = result.rule.statistics
    card = result.rule.summary()
    assert (
        f"Cross-validated RMSE of the log loss: leave-one-out {stats['loo_rmse']:.4g}, "
        f"5-fold {stats['kfold_rmse']:.4g}, 5-fold with the selection repeated "
        f"{stats['kfold_selection_rmse']:.4g}; intercept only (leave-one-out) "
        f"{stats['baseline_loo_rmse']:.4g}"
    ) in card


def test_no_warning_for_a_clean_table():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        fit_rule(table(), features=FEATURES)


def test_selection_frequency_separates_real_indicators_from_noise(tmp_path):
    from instructmining.regression.diagnostics import selection_frequency
    from instructmining.regression.stepwise import select_features

    frame = table(seed=3)
    frame["noise"] = np.random.default_rng(9).normal(size=len(frame))
    X, y = frame[["reward", "knn6", "noise"]], np.log(frame.eval_loss)

    def choose(Xb, yb):
        return select_features(Xb, yb, method="stepwise").features

    share, ran = selection_frequency(X, y, choose, resamples=60, seed=1)
    assert ran == 60 and set(share) == {"reward", "knn6", "noise"}
    assert share["reward"] == 1.0 and share["noise"] < 0.3
    assert selection_frequency(X, y, choose, resamples=60, seed=1) == (share, ran)  # seeded
    # through fit_rule: recorded in the rule, printed on its card and in the report
    result = fit_rule(frame, features=[*FEATURES, "noise"], bootstrap=40, seed=2)
    stats = result.rule.statistics
    assert stats["bootstrap_resamples"] == 40
    assert set(stats["selection_frequency"]) == {*FEATURES, "noise"}
    assert "Chosen in bootstrap resamples of the rows (40 reruns of the selection): " in (
        result.rule.summary()
    )
    report = result.write_report(tmp_path / "rep").read_text()
    assert "## Selection stability" in report and "| reward | 100% |" in report
    assert "selection_frequency" not in fit_rule(frame, features=FEATURES).rule.statistics
