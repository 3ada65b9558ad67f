import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from instructmining import __version__
from instructmining.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "alpaca_style.jsonl"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_version_and_help():
    assert __version__ in run("--version").output
    out = run("--help").output
    assert "Examples:" in out and "score" in out and "indicators" in out


def test_indicators_lists_lengths():
    result = run("indicators")
    assert result.exit_code == 0
    assert "input_length" in result.output and "output_length" in result.output


def test_score_example_end_to_end(tmp_path):
    out = tmp_path / "s.jsonl"
    result = run("score", EXAMPLE, "-o", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    n = len(EXAMPLE.read_text().splitlines())
    assert len(rows) == n
    assert {"id", "input_length", "output_length"} <= set(rows[0])
    # "Translate the sentence into French." + "The library opens at nine." = 5 + 5 words
    assert rows[1]["input_length"] == 10
    assert "mean" in result.output and f"{n} records (alpaca)" in result.output
    summary = json.loads((tmp_path / "s.jsonl.summary.json").read_text())
    assert summary["records"] == n
    assert summary["summary"]["output_length"]["count"] == n


def test_score_keep_fields_parquet(tmp_path):
    out = tmp_path / "s.parquet"
    result = run("score", REPO / "examples" / "chat_messages.jsonl", "-o", out, "--keep-fields")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert list(frame.columns[:2]) == ["id", "messages"]
    assert frame["output_length"].tolist() == [1.0, 12.0]


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text("x\n")
    result = run("score", EXAMPLE, "-o", out)
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert out.read_text() == "x\n"
    assert run("score", EXAMPLE, "-o", out, "--overwrite").exit_code == 0


def _broken(tmp_path):
    lines = [json.dumps({"instruction": f"task {i}", "output": f"answer {i}"}) for i in range(5)]
    lines[2] = '{"instruction": "task 2", "output": '
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_broken_line_exit_2_then_skip(tmp_path):
    data = _broken(tmp_path)
    out = tmp_path / "s.jsonl"
    result = run("score", data, "-o", out)
    assert result.exit_code == 2
    assert "broken.jsonl, line 3" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()

    result = run("score", data, "-o", out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 4
    rejects = [
        json.loads(line) for line in (tmp_path / "s.jsonl.rejects.jsonl").read_text().splitlines()
    ]
    assert [r["line"] for r in rejects] == [3]
    assert rejects[0]["text"] == '{"instruction": "task 2", "output": '
    assert "skipped 1 rows" in result.output


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("", "empty.jsonl", "the file is empty"),
        ('{"q": "a", "a": "b"}\n', "fields.jsonl", "fields found: a, q"),
        ("<x/>", "d.xml", "unknown file type"),
    ],
)
def test_bad_inputs_are_one_line(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_text(content)
    result = run("score", path, "-o", tmp_path / "s.jsonl")
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_map_and_indicator_are_usage_errors(tmp_path):
    result = run("score", EXAMPLE, "-o", tmp_path / "s.jsonl", "--map", "bogus")
    assert result.exit_code == 2 and "target=source" in result.output
    result = run("score", EXAMPLE, "-o", tmp_path / "s.jsonl", "-i", "nope")
    assert result.exit_code == 2 and "unknown indicator 'nope'" in result.output


def test_real_subprocess(tmp_path):
    out = tmp_path / "s.csv"
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "instructmining.cli", "score", str(EXAMPLE), "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(out)) == len(EXAMPLE.read_text().splitlines())
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal


def test_an_indicator_without_a_model_in_its_profile_is_refused_before_work(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Say hi.", "output": "Hi!"}\n')
    out = tmp_path / "s.jsonl"
    result = CliRunner().invoke(main, ["score", str(data), "-o", str(out), "-i", "ifd"])
    assert result.exit_code == 2, result.output
    assert "ifd needs a model and the lite profile gives it none" in result.output
    assert "--model ifd=NAME_OR_PATH" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_set_gives_one_indicators_own_settings(tmp_path):
    out = tmp_path / "s.csv"
    result = run(
        "score", EXAMPLE, "-o", out, "--profile", "lite", "-i", "knn6,mtld",
        "--set", "knn6.k=3", "--set", "mtld.threshold=0.5", "--no-cache", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    params = json.loads(Path(f"{out}.summary.json").read_text())["indicators"]
    assert params["knn6"]["k"] == 3 and params["mtld"]["threshold"] == 0.5
    default = tmp_path / "d.csv"
    assert (
        run("score", EXAMPLE, "-o", default, "--profile", "lite", "-i", "knn6", "-q").exit_code == 0
    )
    assert not pd.read_csv(out)["knn6"].equals(pd.read_csv(default)["knn6"])  # k=3, not 6
    listed = run("indicators", "-v").output
    assert "knn6: k=6, reference=None, dims=256, index='auto'" in listed


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("knn6.k=0", "setting 'k' must be an integer >= 1; got 0"),
        ("knn6.index=bogus", "must be one of auto, exact, hnsw, ivf"),
        ("knn6.kk=2", "unknown setting 'kk'; allowed settings: k,"),
        ("nope.k=2", "no indicator 'nope'"),
        ("knn6=2", "expected IND.KEY=VALUE"),
        ("knn6.model=x", "give model with --model"),
        ("mtld.threshold=0.5", "--set mtld.*: not among the indicators scored"),
    ],
)
def test_bad_set_is_refused_before_work(tmp_path, setting, message):
    out = tmp_path / "s.csv"
    result = run("score", EXAMPLE, "-o", out, "--profile", "lite", "-i", "knn6", "--set", setting)
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    assert not out.exists()
