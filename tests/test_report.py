"""The score report page (`score --report`, `select --report`) and indicator health."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from instructmining.cli import main
from instructmining.indicators.health import check_health, column_health, health_lines
from instructmining.indicators.report import render_page
from instructmining.records import make_record
from instructmining.regression import Rule

PLANTED = "<script>alert('x')</script> & more"
ESCAPED = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more"
LITE = ("input_length", "output_length", "mtld", "knn6", "perplexity")
LENGTH_RULE = Rule(
    name="lengths",
    intercept=0.5,
    coefficients={"output_length": -0.01, "input_length": 0.002},
    indicators={
        "output_length": {"name": "output_length", "backend": "builtin"},
        "input_length": {"name": "input_length", "backend": "builtin"},
    },
)


def _invoke(*args: Any) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _pool(tmp_path: Path, n: int = 24) -> Path:
    rng = random.Random(0)
    words = [
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
    rows = [
        {
            "instruction": " ".join(rng.choices(words, k=rng.randint(2, 8))) + f" task {i}",
            "input": "",
            "output": " ".join(rng.choices(words, k=rng.randint(1, 30))),
        }
        for i in range(n)
    ]
    rows[3]["instruction"] = PLANTED
    rows[3]["output"] = "x " * 400  # the longest output: shown among the highest, truncated
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- health -------------------------------------------------------------------------


def test_health_flags_broken_columns_and_not_a_healthy_one() -> None:
    rng = np.random.default_rng(0)
    n = 200
    nan_heavy = rng.normal(size=n)
    nan_heavy[: int(0.6 * n)] = np.nan
    frame = pd.DataFrame(
        {
            "healthy": rng.normal(size=n),
            "constant": np.full(n, 0.5) + rng.normal(scale=1e-12, size=n),  # float noise
            "mostly_nan": nan_heavy,
            "few": rng.choice([0.0, 0.5, 1.0], size=n),
            "empty": np.full(n, np.nan),
            "integers": rng.integers(0, 50, size=n).astype(float),
        }
    )
    flags = {f.indicator: f for f in check_health(frame, list(frame.columns))}
    assert set(flags) == {"constant", "mostly_nan", "few", "empty"}
    assert flags["constant"].problems == ("constant",)
    assert "is constant (all 200 values are 0.5)" in flags["constant"].message
    assert flags["mostly_nan"].problems == ("mostly_nan",)
    assert "120 of 200 values, 60 %" in flags["mostly_nan"].message
    assert flags["few"].problems == ("few_values",)
    assert "only 3 distinct values over 200 records (0, 0.5, 1)" in flags["few"].message
    assert flags["empty"].problems == ("empty",)
    lines = health_lines(list(flags.values()), len(frame.columns))
    assert len(lines) == 4 and all(line.startswith("health: ") for line in lines)
    assert health_lines([], 3) == [
        "health: all 3 indicators vary (none constant, mostly NaN or few-valued)"
    ]


def test_few_values_needs_a_large_pool() -> None:
    assert column_health("binary", [0.0, 1.0] * 49) is None  # 98 records: too few to judge
    assert column_health("binary", [0.0, 1.0] * 50) is not None
    assert column_health("one", [1.0]) is None  # one value says nothing yet


# --- score --report -------------------------------------------------------------------


def test_score_report_page(tmp_path: Path) -> None:
    data = _pool(tmp_path)
    out, page = tmp_path / "s.jsonl", tmp_path / "rep" / "index.html"
    result = _invoke("score", data, "-o", out, "--report", page.parent, "-q")
    assert result.exit_code == 0, result.output
    assert f"report -> {page}" in result.output
    assert "health: all 5 indicators vary" in result.output
    text = page.read_text()
    assert [p.name for p in page.parent.iterdir()] == ["index.html"]  # plots are inlined
    for name in LITE:
        assert f'<section id="ind-{name}">' in text
    assert text.count('<img src="data:image/png;base64,') == len(LITE) + 1  # + correlations
    assert ESCAPED in text and "<script>" not in text
    assert "x x x" in text and "x " * 200 not in text  # long text truncated
    assert 'id="left-out"' in text and "<b>reward</b>" in text and "--profile paper" in text
    assert "tfidf-svd" in text and "ngram" in text  # how each column was computed
    assert "records scored</th><td>24<" in text
    summary = json.loads((tmp_path / "s.jsonl.summary.json").read_text())
    assert summary["health"] == []


def test_score_prints_a_health_line_per_flagged_indicator(tmp_path: Path) -> None:
    data = tmp_path / "same.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": "q " * (i + 1), "output": "one two three"}) + "\n"
            for i in range(6)
        )
    )
    out = tmp_path / "s.jsonl"
    result = _invoke("score", data, "-o", out, "-i", "output_length,input_length", "-q")
    assert result.exit_code == 0, result.output
    health = [line for line in result.output.splitlines() if line.startswith("health:")]
    assert health == ["health: output_length is constant (all 6 values are 3)"]
    summary = json.loads((tmp_path / "s.jsonl.summary.json").read_text())
    assert summary["health"][0]["problems"] == ["constant"]


def test_existing_page_needs_overwrite(tmp_path: Path) -> None:
    data = _pool(tmp_path)
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "index.html").write_text("old")
    result = _invoke("score", data, "-o", tmp_path / "s.jsonl", "--report", tmp_path / "rep")
    assert result.exit_code == 2
    assert "--overwrite" in result.output and not (tmp_path / "s.jsonl").exists()
    assert (tmp_path / "rep" / "index.html").read_text() == "old"


@pytest.fixture
def no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any indicator computed from here on fails the test: the refusal must come first."""
    # modules that bound `score` at import time are patched too, and restored afterwards
    import importlib

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an indicator was computed before the refusal")

    names = ("indicators.engine", "selection.select", "selection.report")
    modules = [importlib.import_module(f"instructmining.{name}") for name in names]
    for module in modules:  # all imported before any is patched
        for entry in ("score", "score_records", "compute"):
            if hasattr(module, entry):
                monkeypatch.setattr(module, entry, boom)


@pytest.mark.parametrize("command", ["score", "select"])
def test_unwritable_report_dir_is_one_line_before_work(
    command: str, tmp_path: Path, no_scoring: None
) -> None:
    data = _pool(tmp_path)
    out = tmp_path / "out.jsonl"
    args = {
        "score": ["score", data, "-o", out],
        "select": ["select", data, "--strategy", "random", "-k", "2", "-o", out],
    }[command]
    result = _invoke(*args, "--report", "/proc/instructmining-report")
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --report /proc/instructmining-report")
    assert "cannot write in /proc" in lines[0] and "folder you can write to" in lines[0]
    assert not out.exists()


# --- select --report ------------------------------------------------------------------


def test_select_report_shows_pool_and_subset(tmp_path: Path) -> None:
    data = _pool(tmp_path)
    rule = tmp_path / "rule.json"
    LENGTH_RULE.save(rule)
    page = tmp_path / "rep" / "index.html"
    result = _invoke(
        "select", data, "--rule", rule, "-k", "5", "-o", tmp_path / "sub.jsonl",
        "--report", page.parent, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "Pool of 24 records and the 5 selected" in text
    assert "<th>subset mean</th>" in text and "<th>selected</th>" in text
    for name in ("output_length", "input_length", "predicted_log_loss"):
        assert f'<section id="ind-{name}">' in text
    assert "rule lengths" in text  # how the prediction was computed
    assert ESCAPED in text and "<script>" not in text
    assert 'id="left-out"' not in text


def test_select_report_of_a_baseline_computes_lengths(tmp_path: Path) -> None:
    data = _pool(tmp_path)
    page = tmp_path / "rep" / "index.html"
    result = _invoke(
        "select", data, "--strategy", "random", "-k", "5", "-o", tmp_path / "sub.jsonl",
        "--report", page.parent, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "were computed for this page" in text
    assert '<section id="ind-output_length">' in text and "Pool of 24 records" in text


def test_render_page_overlays_the_subset_and_escapes_ids() -> None:
    records = [make_record(f"task {i}", "", "answer " * i, id=f"<i>{i}") for i in range(1, 9)]
    frame = pd.DataFrame({"id": [r.id for r in records], "v": np.arange(8.0)})
    mask = np.zeros(8, dtype=bool)
    mask[:3] = True
    text = render_page("t", frame, records, ["v"], selected=mask, left_out={})
    assert "&lt;i&gt;1" in text and "<i>1" not in text
    assert "No indicator was left out" in text
    assert "Lowest 5" in text and "Highest 5" in text
    assert "One indicator: nothing to correlate" in text


def test_select_report_names_how_a_strategys_column_was_computed(tmp_path: Path) -> None:
    data = _pool(tmp_path)
    page = tmp_path / "rep" / "index.html"
    result = _invoke(
        "select", data, "--strategy", "top:mtld", "-k", "5", "-o", tmp_path / "sub.jsonl",
        "--report", page.parent, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert '<section id="ind-mtld">' in text
    assert '<a href="#ind-mtld">mtld</a></td><td>lexicalrichness</td>' in text
    assert '<p class="how">computed by lexicalrichness</p>' in text
