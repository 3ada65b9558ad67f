"""Stored indicator settings are data: rules and study manifests go through indicators.spec.

No model weights: the "model" folders here hold only a config and a Python file that
would leave a marker file behind if anything imported it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructmining.cli import main
from instructmining.errors import InstructMiningError, ParameterError
from instructmining.indicators.registry import create, from_params, registered
from instructmining.indicators.spec import IndicatorSettingsError, allowed_settings, check_params
from instructmining.regression import Rule
from instructmining.selection import select
from instructmining.selection.select import rule_settings

ROWS = [
    {"instruction": f"Task {i}: say something.", "input": "", "output": "word " * (i + 1)}
    for i in range(8)
]


def _pool(tmp_path: Path) -> Path:
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return data


def _code_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A "checkpoint" whose config asks transformers to import its own Python file."""
    folder = tmp_path / "evil-model"
    folder.mkdir()
    marker = tmp_path / "CODE_RAN"
    (folder / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "num_labels": 1,
                "auto_map": {
                    "AutoConfig": "evil.EvilConfig",
                    "AutoModelForSequenceClassification": "evil.EvilModel",
                    "AutoTokenizer": ["evil.EvilTokenizer", None],
                },
            }
        )
    )
    return folder, marker


def _rule_file(tmp_path: Path, indicators: dict, coefficients: dict | None = None) -> Path:
    doc = {
        "kind": "instructmining.rule",
        "schema_version": 1,
        "name": "stored",
        "intercept": 0.5,
        "coefficients": coefficients or {name: -0.01 for name in indicators},
        "indicators": indicators,
    }
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(doc))
    return path


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: ") and "Traceback" not in output
    return lines[0]


def _select(tmp_path: Path, rule: Path, data: Path | None = None) -> tuple[int, str, Path]:
    out = tmp_path / "subset.jsonl"
    result = CliRunner().invoke(
        main,
        ["select", str(data or _pool(tmp_path)), "--rule", str(rule), "-k", "2", "-o", str(out)],
    )
    return result.exit_code, result.output, out


# --- trust_remote_code -----------------------------------------------------------------


def test_select_refuses_a_rule_that_turns_on_remote_code(tmp_path):
    folder, marker = _code_folder(tmp_path)
    rule = _rule_file(
        tmp_path, {"reward": {"name": "reward", "model": str(folder), "trust_remote_code": True}}
    )
    code, output, out = _select(tmp_path, rule)
    assert code == 2
    line = _one_error_line(output)
    assert str(rule) in line and "'reward'" in line and "'trust_remote_code'" in line
    assert "allowed settings: model, device, batch_size, max_length, dtype, template" in line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("value", [True, "true", 1, "yes", None])
def test_remote_code_is_refused_whatever_its_value(value):
    with pytest.raises(IndicatorSettingsError, match="trust_remote_code"):
        from_params({"name": "reward", "trust_remote_code": value}, source="r.json")


def test_stored_false_is_the_default_and_loads_no_code():
    # reward.params() writes the default `false`: a rule fitted on reward keeps working
    ind = from_params({"name": "reward", "model": "m", "trust_remote_code": False})
    assert ind.trust_remote_code is False
    # an indicator that has no such setting refuses it, even false
    with pytest.raises(IndicatorSettingsError, match="'knn6': setting 'trust_remote_code'"):
        from_params({"name": "knn6", "trust_remote_code": False})


def test_the_refusal_is_one_line_on_the_real_command_line(tmp_path):
    folder, marker = _code_folder(tmp_path)
    rule = _rule_file(
        tmp_path, {"reward": {"name": "reward", "model": str(folder), "trust_remote_code": True}}
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "instructmining.cli",
            "select",
            str(_pool(tmp_path)),
            "--rule",
            str(rule),
            "-k",
            "2",
            "-o",
            str(tmp_path / "subset.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert "trust_remote_code" in line and str(rule) in line
    assert not marker.exists()


# --- study manifests -------------------------------------------------------------------


def _study(tmp_path: Path, indicators: list) -> Path:
    folder = tmp_path / "study"
    (folder / "candidates").mkdir(parents=True)
    (folder / "candidates" / "c1.json").write_text(json.dumps(["a"]))
    (folder / "study.json").write_text(
        json.dumps(
            {
                "format": 1,
                "indicators": indicators,
                "candidates": [{"candidate_id": "c1", "kind": "mixture", "n_records": 1}],
            }
        )
    )
    return folder


def test_study_run_refuses_remote_code_in_the_manifest(tmp_path):
    folder, marker = _code_folder(tmp_path)
    study = _study(
        tmp_path,
        [
            {"name": "output_length"},
            {"name": "reward", "model": str(folder), "trust_remote_code": True},
        ],
    )
    result = CliRunner().invoke(main, ["study", "run", str(study), "--quiet"])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert str(study / "study.json") in line and "'reward'" in line
    assert "'trust_remote_code'" in line and "allowed settings:" in line
    assert not marker.exists()
    assert not (study / "base").exists()  # refused before the base model is built


def test_study_fit_refuses_a_manifest_it_would_copy_into_a_rule(tmp_path):
    study = _study(tmp_path, [{"name": "knn6", "k": -3}])
    result = CliRunner().invoke(main, ["study", "fit", str(study)])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "study.json" in line and "'knn6'" in line and "'k'" in line and ">= 1" in line


def test_study_manifest_with_a_5000_digit_integer(tmp_path):
    study = _study(tmp_path, [])
    text = (study / "study.json").read_text()
    (study / "study.json").write_text(text.replace('"indicators": []', '"size": ' + "9" * 5000))
    result = CliRunner().invoke(main, ["study", "run", str(study), "--quiet"])
    assert result.exit_code != 0
    line = _one_error_line(result.output)
    assert "study.json" in line and "too long" in line


# --- bad values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "words"),
    [
        (
            {"name": "knn6", "neighbours": 6},
            ["unknown setting 'neighbours'", "allowed settings: k,"],
        ),
        ({"name": "knn6", "k": -3}, ["'k'", "integer >= 1", "-3"]),
        ({"name": "knn6", "k": 0}, ["'k'", "integer >= 1"]),
        ({"name": "knn6", "k": 10**5000}, ["'k'", "1,000,000,000", "5001 digits"]),
        ({"name": "knn6", "k": 10**9 + 1}, ["'k'", "1,000,000,000"]),
        ({"name": "knn6", "k": True}, ["'k'", "must be an integer", "got true"]),
        ({"name": "knn6", "k": 6.0}, ["'k'", "must be an integer"]),
        ({"name": "knn6", "k": "6"}, ["'k'", "must be an integer"]),
        ({"name": "knn6", "model": ["a", "b"]}, ["'model'", "string or null", "a list"]),
        ({"name": "knn6", "model": "x" * 5000}, ["'model'", "at most 4096"]),
        ({"name": "knn6", "device": "cuda; rm -rf"}, ["'device'", "auto, cpu or cuda"]),
        ({"name": "reward", "dtype": "fp8"}, ["'dtype'", "auto, fp32, fp16, bf16"]),
        ({"name": "reward", "template": "mine"}, ["'template'", "auto, oasst, chat, pair"]),
        ({"name": "perplexity", "model": "m", "template": "oasst"}, ["'template'", "chat"]),
        ({"name": "reward", "max_length": 4}, ["'max_length'", ">= 8"]),
        ({"name": "perplexity", "folds": 1}, ["'folds'", ">= 2"]),
        ({"name": "mtld", "threshold": 1.5}, ["'threshold'", "(0, 1)"]),
        ({"name": "mtld", "threshold": float("inf")}, ["'threshold'", "finite"]),
        ({"name": "mtld", "threshold": "0.7"}, ["'threshold'", "must be a number"]),
        ({"name": "input_length", "unit": "words"}, ["unknown setting 'unit'", "none"]),
        ({"name": "no_such_indicator"}, ["not registered here"]),
        ({"k": 6}, ["no 'name'"]),
        (["knn6"], ["must be an object"]),
    ],
)
def test_bad_stored_settings_are_refused_in_one_line(params, words):
    with pytest.raises(IndicatorSettingsError) as info:
        from_params(params, source="rule.json")
    message = str(info.value)
    assert "\n" not in message and message.startswith("rule.json: ")
    assert len(message) < 400
    for word in words:
        assert word in message, message
    assert isinstance(info.value, ParameterError) and isinstance(info.value, InstructMiningError)
    assert info.value.exit_code == 2


def test_version_mismatch_names_both_versions(tmp_path):
    knn = create("knn6").params()
    assert knn["version"] == 1
    with pytest.raises(IndicatorSettingsError) as info:
        from_params({**knn, "version": 7}, source="r.json")
    message = str(info.value)
    assert "version 7" in message and "version 1" in message and "'knn6'" in message
    # the same through the command line, naming the rule file
    rule = _rule_file(tmp_path, {"output_length": {"name": "output_length", "version": 2}})
    code, output, _ = _select(tmp_path, rule)
    assert code == 2
    line = _one_error_line(output)
    assert str(rule) in line and "version 2" in line and "version 1" in line


def test_copying_settings_can_skip_the_version_check():
    cls, settings = check_params({"name": "knn6", "version": 7, "k": 3}, check_version=False)
    assert cls.name == "knn6" and settings == {"k": 3}


def test_backend_the_settings_do_not_give_is_refused():
    # stored for a causal LM, but without its model the n-gram backend would run
    with pytest.raises(IndicatorSettingsError, match=r"backend 'causal-lm'.*'ngram'"):
        from_params({"name": "perplexity", "backend": "causal-lm", "version": 1})


def test_select_cli_refuses_unknown_setting_and_huge_integers(tmp_path):
    rule = _rule_file(tmp_path, {"knn6": {"name": "knn6", "kk": 6}})
    code, output, _ = _select(tmp_path, rule)
    assert code == 2
    line = _one_error_line(output)
    assert "'knn6'" in line and "unknown setting 'kk'" in line and "allowed settings:" in line

    rule.write_text(rule.read_text().replace('"kk": 6', '"k": ' + "7" * 4000))
    code, output, _ = _select(tmp_path, rule)
    assert code == 2
    assert "'k'" in _one_error_line(output)

    rule.write_text(rule.read_text().replace("7" * 4000, "7" * 5000))
    code, output, _ = _select(tmp_path, rule)
    assert code == 2  # Python will not read the number: the rule file is refused as JSON
    assert "too long" in _one_error_line(output)

    rule.write_text(rule.read_text().replace('"k": ' + "7" * 5000, '"k": -3'))
    code, output, _ = _select(tmp_path, rule)
    assert code == 2 and ">= 1" in _one_error_line(output)


def test_refused_before_any_data_is_read(tmp_path):
    rule = _rule_file(tmp_path, {"knn6": {"name": "knn6", "k": -3}})
    code, output, _ = _select(tmp_path, rule, data=tmp_path / "missing.jsonl")
    assert code == 2 and "'k'" in _one_error_line(output)


def test_settings_stored_under_another_indicator_name(tmp_path):
    rule = Rule(
        name="swap",
        intercept=0.0,
        coefficients={"output_length": 1.0},
        indicators={"output_length": {"name": "input_length"}},
    )
    with pytest.raises(IndicatorSettingsError, match=r"'output_length'.*'input_length'"):
        rule_settings(rule)


def test_diversity_embeddings_go_through_the_gate(tmp_path):
    from instructmining.records import make_record

    records = [make_record(r["instruction"], "", r["output"]) for r in ROWS]
    rule = Rule(
        name="div",
        intercept=0.0,
        coefficients={"output_length": -0.1},
        indicators={"output_length": {"name": "output_length"}, "knn6": {"name": "knn6", "k": -1}},
    )
    with pytest.raises(IndicatorSettingsError, match=r"rule 'div'.*'knn6'.*'k'"):
        select(records, rule, k=3, diversity=0.9)


# --- valid settings --------------------------------------------------------------------


def _every_indicator() -> list:
    out = []
    for name in registered():
        out.append(create(name, model="some/causal-lm") if name == "ifd" else create(name))
    out += [
        create("knn6", k=3, model="some/sentence-model", max_length=128),
        create("perplexity", model="some/causal-lm", template="plain", max_length=64),
        create("mtld", threshold=0.5),
        create("reward", model="some/rm", template="pair", dtype="bf16"),
    ]
    return out


@pytest.mark.parametrize("ind", _every_indicator(), ids=repr)
def test_params_round_trip(ind):
    params = ind.params()
    rebuilt = from_params(json.loads(json.dumps(params)), source="rule.json")
    assert type(rebuilt) is type(ind)
    assert rebuilt.params() == params and rebuilt.key() == ind.key()


def test_a_valid_rule_file_loads_round_trips_and_selects(tmp_path):
    chosen = [create("output_length"), create("input_length"), create("mtld")]
    rule = Rule(
        name="valid",
        intercept=0.5,
        coefficients={"output_length": -0.01, "input_length": 0.002, "mtld": 0.001},
        indicators={ind.name: ind.params() for ind in chosen},
    )
    path = tmp_path / "rule.json"
    rule.save(path)
    loaded = Rule.load(path)
    assert loaded == rule and loaded.source == str(path)
    assert {name: from_params(p).params() for name, p in loaded.indicators.items()} == {
        ind.name: ind.params() for ind in chosen
    }
    assert rule_settings(loaded)["mtld"] == {"threshold": 0.72}
    code, output, out = _select(tmp_path, path)
    assert code == 0, output
    assert len(out.read_text().splitlines()) == 2


def test_allowed_settings_leave_out_remote_code():
    assert "trust_remote_code" not in allowed_settings(registered()["reward"])
    assert allowed_settings(registered()["input_length"]) == ()
