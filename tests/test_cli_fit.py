"""`instructmining fit` and `instructmining rule show` through CliRunner, and once as a process."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from instructmining.cli import main
from instructmining.regression import load_rule


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_table(path, n=30, seed=0, **extra):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "candidate_id": [f"c{i:02d}" for i in range(n)],
            "reward": rng.normal(1.0, 0.5, n),
            "output_length": rng.normal(150.0, 40.0, n),
            "knn6": rng.normal(0.6, 0.05, n),
            "mtld": rng.normal(60.0, 10.0, n),
            "score_s": rng.uniform(1, 2, n),  # metadata, not an indicator
        }
    )
    frame["eval_loss"] = np.exp(
        1.07
        - 0.15 * frame.reward
        + 8e-4 * frame.output_length
        - 0.9 * frame.knn6
        + rng.normal(0, 0.02, n)
    )
    for name, values in extra.items():
        frame[name] = values
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return frame


def one_line_error(result, code, *needles):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_fit_end_to_end_with_report(tmp_path):
    table = tmp_path / "results.csv"
    write_table(table)
    rule_path = tmp_path / "rule.json"
    result = run("fit", table, "-o", rule_path, "--report", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    rule = load_rule(rule_path)
    assert set(rule.features) == {"reward", "output_length", "knn6"}
    assert rule.selection["candidates"] == ["reward", "output_length", "knn6", "mtld"]
    assert rule.provenance["source"] == str(table)
    assert "log(eval_loss) =" in result.stdout and "leave-one-out RMSE" in result.stdout
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## Selection path" in report
    assert (tmp_path / "rep" / "coefficients.png").exists()
    shown = run("rule", "show", rule_path)
    assert shown.exit_code == 0 and "fitted-results" in shown.output
    again = run("fit", table, "-o", rule_path)
    one_line_error(again, 2, "exists already", "--overwrite")
    # --bootstrap: the selection's stability, on the card rule show prints
    stable = run("fit", table, "-o", rule_path, "--bootstrap", "25", "--overwrite")
    assert stable.exit_code == 0, stable.output
    assert load_rule(rule_path).statistics["bootstrap_resamples"] == 25
    assert (
        "Chosen in bootstrap resamples of the rows (25 reruns"
        in run("rule", "show", rule_path).output
    )
    assert "Chosen in bootstrap" not in shown.output  # not measured by default


def test_fit_options_and_parquet_metadata(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "results.parquet"
    frame = write_table(table)
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {"indicators": {"reward": {"name": "reward", "model": "tiny/rm", "version": 1}}}
    arrow = arrow.replace_schema_metadata(
        {**(arrow.schema.metadata or {}), b"instructmining": json.dumps(meta).encode()}
    )
    pq.write_table(arrow, table)
    out = tmp_path / "r.json"
    result = run(
        "fit",
        table,
        "-o",
        out,
        "--features",
        "reward,mtld",
        "--method",
        "best-subset",
        "--rank-by",
        "adj_r2",
        "--standardize",
        "--cv-folds",
        "3",
        "--name",
        "mine",
    )
    assert result.exit_code == 0, result.output
    rule = load_rule(out)
    assert rule.name == "mine" and rule.standardization is not None
    assert rule.indicators["reward"]["model"] == "tiny/rm"
    assert rule.selection["method"] == "best-subset" and rule.statistics["cv_folds"] == 3
    raw = run(
        "fit",
        table,
        "-o",
        tmp_path / "raw.json",
        "--target-transform",
        "none",
        "--direction",
        "forward",
        "--criterion",
        "bic",
    )
    assert raw.exit_code == 0, raw.output
    assert load_rule(tmp_path / "raw.json").target_transform == "none"


def test_too_few_rows(tmp_path):
    table = tmp_path / "t.csv"
    write_table(table, n=5)
    result = run("fit", table, "-o", tmp_path / "r.json", "--method", "all")
    one_line_error(result, 2, str(table), "at least 7 are needed")
    tiny = tmp_path / "tiny.csv"
    write_table(tiny, n=3)
    one_line_error(run("fit", tiny, "-o", tmp_path / "r.json"), 2, "at least 4")


def test_constant_and_all_nan_columns_warn_on_stderr(tmp_path):
    table = tmp_path / "t.csv"
    write_table(table, perplexity=5.0, coherence=np.nan)
    result = run("fit", table, "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "Warning: indicator column 'perplexity' dropped: constant" in result.stderr
    assert "Warning: indicator column 'coherence' dropped: all values missing" in result.stderr


def test_nan_rows_error_unless_dropna(tmp_path):
    table = tmp_path / "t.csv"
    rewards = np.random.default_rng(1).normal(size=30)
    rewards[[2, 9]] = np.nan
    write_table(table, naturalness=rewards)
    result = run("fit", table, "-o", tmp_path / "r.json")
    one_line_error(result, 2, str(table), "candidate_id=c02, candidate_id=c09", "--dropna")
    ok = run("fit", table, "-o", tmp_path / "r.json", "--dropna")
    assert ok.exit_code == 0, ok.output
    assert "2 row(s) with missing values left out" in ok.stderr
    assert load_rule(tmp_path / "r.json").statistics["n"] == 28


def test_non_positive_loss_with_log_target(tmp_path):
    table = tmp_path / "t.csv"
    frame = write_table(table)
    frame.loc[0, "eval_loss"] = -0.5
    frame.to_csv(table, index=False)
    one_line_error(
        run("fit", table, "-o", tmp_path / "r.json"), 2, "non-positive losses in candidate_id=c00"
    )
    ok = run("fit", table, "-o", tmp_path / "r.json", "--target-transform", "none")
    assert ok.exit_code == 0, ok.output


def test_collinear_indicators_warn_and_choose_stably(tmp_path):
    table = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    frame = write_table(table)
    frame["input_length"] = frame.output_length * 0.5 + 3  # a copy of output_length
    frame["mtld"] = rng.normal(size=30)
    frame.to_csv(table, index=False)
    result = run("fit", table, "-o", tmp_path / "r.json", "--method", "all")
    assert result.exit_code == 0, result.output
    assert "'input_length' dropped: perfectly collinear with output_length" in result.stderr
    assert "input_length" not in load_rule(tmp_path / "r.json").features


def test_other_bad_inputs(tmp_path):
    table = tmp_path / "t.csv"
    write_table(table)
    one_line_error(
        run("fit", table, "-o", tmp_path / "r.json", "--loss", "loss"), 2, "missing column(s) loss"
    )
    one_line_error(
        run("fit", tmp_path / "none.csv", "-o", tmp_path / "r.json"), 2, "none.csv", "no such file"
    )
    odd = tmp_path / "t.xlsx"
    odd.write_text("x")
    one_line_error(run("fit", odd, "-o", tmp_path / "r.json"), 2, "unknown table type")
    plain = tmp_path / "plain.csv"
    pd.DataFrame({"a": [1, 2, 3, 4], "eval_loss": [1, 2, 3, 4]}).to_csv(plain, index=False)
    one_line_error(run("fit", plain, "-o", tmp_path / "r.json"), 2, "--features")
    one_line_error(
        run("fit", table, "-o", tmp_path / "r.json", "--enter", "0.2", "--remove", "0.1"),
        2,
        "enter (0.2) must not exceed remove (0.1)",
    )
    bad = run("fit", table, "-o", tmp_path / "r.txt")
    assert bad.exit_code == 2 and ".json" in bad.output


def test_rule_show_builtin_and_errors(tmp_path):
    result = run("rule", "show", "paper-v1")
    assert result.exit_code == 0
    assert "1.0694" in result.output and "knn6" in result.output and "SentenceBERT" in result.output
    as_json = run("rule", "show", "paper-v3", "--json")
    assert json.loads(as_json.output)["coefficients"]["understandability"] == 0.4421
    one_line_error(run("rule", "show", "paper-v9"), 2, "built-in: paper-v1, paper-v3")
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2")
    one_line_error(run("rule", "show", broken), 2, "broken.json", "not valid JSON")


@pytest.mark.slow
def test_fit_as_a_real_process(tmp_path):
    table = tmp_path / "results.csv"
    write_table(table)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "instructmining.cli",
            "fit",
            str(table),
            "-o",
            str(tmp_path / "rule.json"),
            "--report",
            str(tmp_path / "rep"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rep" / "residuals.png").exists()


def test_rule_list_names_every_builtin_with_its_source():
    from instructmining.regression import BUILTIN_RULES

    out = CliRunner().invoke(main, ["rule", "list"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split()[:2] == ["name", "source"]
    listed = {line.split()[0] for line in lines[1:]}
    assert listed == set(BUILTIN_RULES)
    paper = next(line for line in lines if line.startswith("paper-v1"))
    assert "LLaMA-7B" in paper and "knn6" in paper


def test_rule_list_shows_a_study_fitted_rule(tmp_path, monkeypatch):
    # a shipped rule's provenance names its study (a mapping), not a paper
    from instructmining.regression import BUILTIN_RULES, Rule

    rule = Rule(
        name="study-v0",
        intercept=0.7,
        coefficients={"output_length": -0.001},
        indicators={"output_length": {"name": "output_length"}},
        provenance={"study": {"folder": "demo", "candidates": 48, "base_model": "tiny-lm"}},
    )
    monkeypatch.setitem(BUILTIN_RULES, "study-v0", lambda: rule)
    out = CliRunner().invoke(main, ["rule", "list"])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("study-v0"))
    assert "study demo (48 candidates)" in line and "tiny-lm" in line and "output_length" in line
