import json
import random

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmining.cli import main
from instructmining.records import make_record
from instructmining.regression import Rule
from instructmining.selection import MissingIndicatorError, select, select_file
from instructmining.selection.diversity import diverse_prefix

# Longer outputs and shorter prompts predict a lower loss under this rule.
LENGTH_RULE = Rule(
    name="lengths",
    intercept=0.5,
    coefficients={"output_length": -0.01, "input_length": 0.002},
    indicators={
        "output_length": {"name": "output_length"},
        "input_length": {"name": "input_length"},
    },
)


def pool(n=40, seed=0):
    rng = random.Random(seed)
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
    return [
        make_record(
            " ".join(rng.choices(words, k=rng.randint(2, 8))) + f" task {i}",
            "",
            " ".join(rng.choices(words, k=rng.randint(1, 30))),
        )
        for i in range(n)
    ]


def test_rule_ranking_is_lowest_predicted_loss_first():
    records = pool()
    sel = select(records, LENGTH_RULE, k=10)
    scores = sel.scores
    eta = 0.5 - 0.01 * scores["output_length"] + 0.002 * scores["input_length"]
    np.testing.assert_allclose(scores["predicted_log_loss"], eta)
    chosen = scores.loc[sel.indices, "predicted_log_loss"].to_numpy()
    assert np.all(np.diff(chosen) >= 0)
    assert chosen.max() <= scores.loc[~scores["selected"], "predicted_log_loss"].min()
    assert scores["selected"].sum() == 10


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 29))
def test_top_k_is_a_prefix_of_top_k_plus_1(seed, k):
    records = pool(30, seed)
    a = select(records, LENGTH_RULE, k=k).indices
    b = select(records, LENGTH_RULE, k=k + 1).indices
    assert list(b[:k]) == list(a)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), strategy=st.sampled_from(["rule", "random", "longest"]))
def test_permuting_the_input_permutes_the_selection(seed, strategy):
    records = pool(30, seed)
    perm = list(range(30))
    random.Random(seed).shuffle(perm)
    shuffled = [records[i] for i in perm]
    rule = LENGTH_RULE if strategy == "rule" else None
    a = [records[i].id for i in select(records, rule, k=12, strategy=strategy).indices]
    b = [shuffled[i].id for i in select(shuffled, rule, k=12, strategy=strategy).indices]
    assert a == b


def test_same_rule_same_data_same_subset():
    records = pool()
    assert list(select(records, LENGTH_RULE, k=7).indices) == list(
        select(records, LENGTH_RULE, k=7).indices
    )


def test_ties_are_broken_by_id():
    records = [make_record(f"q{i}", "", "same words here") for i in range(6)]
    sel = select(records, LENGTH_RULE, k=3)
    ids = [records[i].id for i in sel.indices]
    assert ids == sorted(r.id for r in records)[:3]


def test_fraction_and_threshold():
    records = pool(40)
    assert len(select(records, LENGTH_RULE, fraction=0.25).indices) == 10
    sel = select(records, LENGTH_RULE, max_predicted_loss=np.exp(0.4))
    kept = sel.scores.loc[sel.indices, "predicted_loss"]
    assert (kept <= np.exp(0.4)).all()
    assert (sel.scores.loc[~sel.scores["selected"], "predicted_loss"] > np.exp(0.4)).all()


def test_baselines():
    records = pool(40)
    longest = select(records, None, k=5, strategy="longest")
    lengths = [len(records[i].output.split()) for i in longest.indices]
    assert lengths == sorted(lengths, reverse=True)
    assert lengths[-1] >= max(
        len(r.output.split()) for i, r in enumerate(records) if i not in longest.indices
    )
    r1 = select(records, None, k=5, strategy="random", seed=1).indices
    r2 = select(records, None, k=5, strategy="random", seed=2).indices
    assert list(r1) != list(r2)
    assert list(r1) == list(select(records, None, k=5, strategy="random", seed=1).indices)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "The 'k' parameter of select must be an int >= 1. Got 0 instead."),
        ({"k": 41}, "exceeds the 40 records"),
        ({"fraction": 1.5}, "'fraction'"),
        ({}, "Say how many"),
        ({"k": 3, "strategy": "best"}, "'strategy'"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select(pool(40), LENGTH_RULE, **kwargs)


def test_rule_needing_an_unavailable_model_fails_before_work(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingIndicatorError) as err:
        select(pool(10), _paper_v1(), k=2)
    msg = str(err.value)
    assert "reward" in msg and "--model reward=" in msg


def _paper_v1():
    from instructmining.regression import load_rule

    return load_rule("paper-v1")


def test_rule_with_unregistered_indicator():
    rule = Rule(
        name="odd",
        intercept=0.0,
        coefficients={"sparkle": 1.0},
        indicators={"sparkle": {"name": "sparkle"}},
    )
    with pytest.raises(MissingIndicatorError, match="needs indicator 'sparkle'"):
        select(pool(10), rule, k=2)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.05, 0.99))
def test_diversity_never_keeps_two_records_above_threshold(seed, threshold):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(25, 4))
    emb[5] = emb[3]  # an exact duplicate
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    kept, rejected = diverse_prefix(np.arange(25), emb, threshold)
    sims = emb[kept] @ emb[kept].T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= threshold + 1e-12
    assert len(kept) + rejected == 25


def test_select_file_writes_subset_in_input_fields(tmp_path):
    records = pool(20)
    data = tmp_path / "pool.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"instruction": r.instruction, "context": "", "response": r.output, "category": "x"}
            )
            + "\n"
            for r in records
        )
    )
    report = select_file(
        data, tmp_path / "sub.jsonl", rule=LENGTH_RULE, k=4, scores_out=tmp_path / "scores.csv"
    )
    rows = [json.loads(line) for line in (tmp_path / "sub.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"instruction", "context", "response", "category"}
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == 20 and scores["selected"].sum() == 4
    assert report.n_selected == 4
    meta = json.loads((tmp_path / "sub.jsonl.selection.json").read_text())
    assert meta["selected"] == 4 and meta["rule"]["name"] == "lengths"


def test_cli_select(tmp_path):
    records = pool(20)
    data = tmp_path / "pool.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": r.instruction, "input": "", "output": r.output}) + "\n"
            for r in records
        )
    )
    rule_path = tmp_path / "rule.json"
    LENGTH_RULE.save(rule_path)
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "select",
            str(data),
            "--rule",
            str(rule_path),
            "-k",
            "5",
            "-o",
            str(tmp_path / "sub.jsonl"),
            "--scores-out",
            str(tmp_path / "s.parquet"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "sub.jsonl").read_text().splitlines()) == 5
    assert "selected 5 of 20" in result.output
    cached = runner.invoke(
        main,
        [
            "select",
            str(data),
            "--rule",
            str(rule_path),
            "-k",
            "5",
            "--cache",
            str(tmp_path / "c.sqlite"),
            "-o",
            str(tmp_path / "sub4.jsonl"),
        ],
    )
    assert cached.exit_code == 0, cached.output
    assert (tmp_path / "c.sqlite").exists()
    assert (tmp_path / "sub4.jsonl").read_text() == (tmp_path / "sub.jsonl").read_text()
    result = runner.invoke(
        main,
        ["select", str(data), "--rule", "paper-v1", "-k", "5", "-o", str(tmp_path / "sub2.jsonl")],
    )
    assert result.exit_code == 1
    assert "reward" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        main,
        [
            "select",
            str(data),
            "--strategy",
            "longest",
            "-k",
            "0",
            "-o",
            str(tmp_path / "sub3.jsonl"),
        ],
    )
    assert result.exit_code == 2 and "'-k'" in result.output


def test_select_with_diversity_uses_knn6_embeddings():
    from instructmining.indicators.knn import KNN

    records = pool(40)
    records += [make_record(r.instruction + " again", "", r.output) for r in records[:10]]
    sel = select(records, LENGTH_RULE, k=12, diversity=0.6)
    emb = KNN().embed(records)
    kept = emb[sel.indices]
    sims = kept @ kept.T
    np.fill_diagonal(sims, -1)
    assert len(sel.indices) == 12 and sims.max() <= 0.6 + 1e-9
    assert sel.rejected_for_diversity > 0
    plain = select(records, LENGTH_RULE, k=12)
    assert list(plain.indices) != list(sel.indices)
