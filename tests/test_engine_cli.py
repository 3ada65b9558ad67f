import json

import pandas as pd
import pytest
from click.testing import CliRunner

from instructmining.cli import main
from instructmining.indicators.profiles import OFFLINE_INDICATORS, PAPER_INDICATORS

WORDS = [
    "sun",
    "moon",
    "river",
    "stone",
    "bread",
    "light",
    "paper",
    "cloud",
    "garden",
    "ocean",
    "music",
    "silver",
]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTMINING_CACHE", str(tmp_path / "default-cache.sqlite"))
    path = tmp_path / "d.jsonl"
    rows = [
        {
            "instruction": f"Write about {WORDS[i % 12]}",
            "input": "in one line" if i % 3 else "",
            "output": " ".join(WORDS[(i * j) % 12] for j in range(i % 9 + 1)),
        }
        for i in range(24)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_indicators_lists_all_nine_with_backends():
    result = run("indicators")
    assert result.exit_code == 0, result.output
    for name in PAPER_INDICATORS:
        assert f"\n{name} " in result.output
    for backend in ("tfidf-svd", "sentence-transformers", "ngram", "causal-lm", "lexicalrichness"):
        assert backend in result.output
    assert "MingZhong/unieval-dialog" in result.output


def test_offline_default_prints_left_out_and_reuses_the_cache(data, tmp_path):
    out = tmp_path / "s.parquet"
    result = run("score", data, "-o", out)
    assert result.exit_code == 0, result.output
    assert "profile lite" in result.output
    assert "left out reward: needs downloaded weights" in result.output
    assert "left out naturalness" in result.output and "--model unieval=PATH" in result.output
    assert "0 scores reused" in result.output
    assert (tmp_path / "default-cache.sqlite").exists()
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["id", *OFFLINE_INDICATORS] and len(frame) == 24
    again = run("score", data, "-o", out, "--overwrite")
    assert f"{24 * len(OFFLINE_INDICATORS)} scores reused, 0 computed" in again.output
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)
    summary = json.loads((tmp_path / "s.parquet.summary.json").read_text())
    assert summary["indicators"]["perplexity"]["backend"] == "ngram"
    assert set(summary["left_out"]) == {"reward", "naturalness", "coherence", "understandability"}


def test_cache_options(data, tmp_path):
    out = tmp_path / "s.jsonl"
    cache = tmp_path / "mine.sqlite"
    result = run("score", data, "-o", out, "-i", "mtld", "--cache", cache)
    assert result.exit_code == 0 and cache.exists() and f"cache {cache}" in result.output
    result = run("score", data, "-o", out, "-i", "mtld", "--no-cache", "--overwrite")
    assert result.exit_code == 0 and "scores reused" not in result.output
    result = run("score", data, "-o", out, "--no-cache", "--cache", cache, "--overwrite")
    assert result.exit_code == 2 and "exclude each other" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "reward"], "is not NAME=CHECKPOINT"),
        (["--model", "bogus=/x"], "unknown key; choose from"),
        (["--device", "tpu"], "use auto, cpu or cuda"),
        (["--profile", "fast"], "'fast' is not one of"),
        (["--batch-size", "0"], "0 is not in the range"),
    ],
)
def test_option_errors_are_usage_errors(data, tmp_path, args, message):
    result = run("score", data, "-o", tmp_path / "s.jsonl", *args)
    assert result.exit_code == 2 and message in result.output


def test_every_command_checks_model_keys_the_same_way(data, tmp_path):
    # select and generate share score's --model parsing: an unknown key stops them too
    result = run("select", data, "--rule", "paper-v1", "-k", "2", "--model", "bogus=/x")
    assert result.exit_code == 2 and "unknown key; choose from" in result.output


def test_paper_profile_without_checkpoints_fails_fast(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "s.jsonl"
    result = run("score", data, "-o", out, "--profile", "paper")
    assert result.exit_code == 1
    assert "--model" in result.output and "HF_HUB_OFFLINE" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    missing = tmp_path / "nowhere"
    result = run("score", data, "-o", out, "-i", "perplexity", "--model", f"perplexity={missing}")
    assert result.exit_code == 2 and f"'{missing}' does not exist" in result.output


def test_truncation_is_reported(data, tmp_path, tiny_causal_lm):
    out = tmp_path / "s.jsonl"
    result = run(
        "score", data, "-o", out, "-i", "perplexity", "--model", f"perplexity={tiny_causal_lm}",
        "--max-length", "8", "--device", "cpu", "--batch-size", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "perplexity:" in result.output and "truncated at the maximum length" in result.output
    summary = json.loads((tmp_path / "s.jsonl.summary.json").read_text())
    assert summary["indicators"]["perplexity"]["backend"] == "causal-lm"
    assert summary["indicators"]["perplexity"]["max_length"] == 8
    assert summary["runs"]["perplexity"]["truncated"] > 0


def test_paper_profile_with_local_tiny_checkpoints(
    data, tmp_path, tiny_causal_lm, tiny_reward_model, tiny_t5, tiny_sentence_transformer
):
    out = tmp_path / "s.parquet"
    result = run(
        "score", data, "-o", out, "--profile", "paper",
        "--model", f"reward={tiny_reward_model}", "--model", f"perplexity={tiny_causal_lm}",
        "--model", f"knn6={tiny_sentence_transformer}", "--model", f"unieval={tiny_t5}",
        "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "left out" not in result.output
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["id", *PAPER_INDICATORS]
    assert frame.drop(columns="id").notna().all().all()
    summary = json.loads((tmp_path / "s.parquet.summary.json").read_text())
    assert summary["profile"] == "paper"
    assert summary["indicators"]["knn6"]["backend"] == "sentence-transformers"
    assert summary["indicators"]["coherence"]["model"] == str(tiny_t5)
    again = run(
        "score", data, "-o", out, "--profile", "paper", "--overwrite",
        "--model", f"reward={tiny_reward_model}", "--model", f"perplexity={tiny_causal_lm}",
        "--model", f"knn6={tiny_sentence_transformer}", "--model", f"unieval={tiny_t5}",
    )  # fmt: skip
    assert f"{24 * 9} scores reused, 0 computed" in again.output
