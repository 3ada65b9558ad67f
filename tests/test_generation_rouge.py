"""The fast ROUGE-L must decide exactly like rouge_score (tokens, LCS, F-measure, > threshold)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmining.generation.rouge import RougeLIndex, lcs_length, rouge_l, rouge_tokens

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
rouge_tokenize = pytest.importorskip("rouge_score.tokenize")
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def ref(target: str, prediction: str) -> float:
    return float(SCORER.score(target, prediction)["rougeL"].fmeasure)


def ref_lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
            )
    return table[-1][-1]


# text that exercises the tokenizer: letters, digits, case, punctuation, spaces, unicode
TEXT = st.lists(
    st.sampled_from([*"abcAB01 .,:-'\n\tÉéßİKﬁ", "the", "cat", "dog", " "]), max_size=30
).map("".join)
WORDS = st.lists(st.sampled_from(["a", "b", "c", "d", "the", "of", "x1"]), max_size=12).map(
    " ".join
)


@given(st.text(max_size=60))
def test_tokens_match_rouge_score_on_any_text(text: str) -> None:
    assert rouge_tokens(text) == rouge_tokenize.tokenize(text, None)


@given(TEXT)
def test_tokens_match_on_tricky_characters(text: str) -> None:
    assert rouge_tokens(text) == rouge_tokenize.tokenize(text, None)


@given(st.lists(st.integers(0, 4), max_size=15), st.lists(st.integers(0, 4), max_size=15))
def test_bit_parallel_lcs_equals_dynamic_programming(a: list[int], b: list[int]) -> None:
    assert lcs_length(a, b) == ref_lcs([str(x) for x in a], [str(x) for x in b])


@given(WORDS | TEXT, WORDS | TEXT)
def test_pair_score_is_bit_identical(a: str, b: str) -> None:
    assert rouge_l(a, b) == ref(a, b)


@settings(max_examples=60, deadline=None)
@given(st.lists(WORDS | TEXT, max_size=25), WORDS | TEXT, st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_index_decisions_and_scores_match(pool: list[str], query: str, threshold: float) -> None:
    index = RougeLIndex(pool)
    scores = [ref(p, query) for p in pool]
    assert index.any_above(query, threshold) == any(s > threshold for s in scores)
    assert index.scores(query).tolist() == scores
    assert index.max_score(query) == (max(scores) if scores else 0.0)
    if scores:
        top = index.most_similar(query, k=3)
        assert [s for _, s in top] == sorted(scores, reverse=True)[:3]
        assert all(scores[row] == s for row, s in top)


def test_threshold_is_strict_at_exactly_point_seven() -> None:
    # 7 shared tokens of 10 + 10: F1 is 0.7 up to rounding; the decision must follow the float
    a = "a b c d e f g h i j"
    b = "a b c d e f g x y z"
    index = RougeLIndex([a])
    assert index.any_above(b, 0.7) == (ref(a, b) > 0.7)
    assert index.max_score(b) == ref(a, b)


def test_empty_texts_score_zero() -> None:
    index = RougeLIndex(["", "...", "a b"])
    assert index.max_score("") == 0.0
    assert not index.any_above("!!!", 0.0)
    assert index.scores("a").tolist() == [0.0, 0.0, ref("a b", "a")]


def test_most_similar_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        RougeLIndex(["a"]).most_similar("a", k=0)


def _instructions(shared: object) -> list[str]:
    from pathlib import Path

    root = Path(str(shared))
    out = [
        json.loads(x)["instruction"]
        for x in (root / "seeds/self_instruct_seed_tasks_175.jsonl").open()
    ]
    out += [
        json.loads(x)["instruction"]
        for x in (root / "eval/self_instruct_user_oriented_252.jsonl").open()
    ]
    return out


def test_identical_on_real_instructions(shared_data: object) -> None:
    texts = _instructions(shared_data)
    rng = random.Random(0)
    pool = texts[:175]  # the seeds
    index = RougeLIndex(pool)
    # user-oriented instructions plus near-copies of seeds, so both decisions occur
    queries = texts[175:275] + [" ".join(t.split()[1:]) + " now" for t in rng.sample(pool, 30)]
    positives = 0
    for q in queries:
        scores = [ref(p, q) for p in pool]
        decision = any(s > 0.7 for s in scores)
        positives += decision
        assert index.any_above(q, 0.7) == decision, q
        assert index.max_score(q) == max(scores), q
    assert positives >= 20
