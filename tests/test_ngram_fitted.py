"""The fitted n-gram models give exactly the values of `witten_bell_perplexity`.

Equality is asserted bit for bit (stronger than the rtol 1e-12 contract): the fitted
models repeat the same floating-point operations, so wiring them into the indicator
must not move its pinned values.
"""

import json
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmining.indicators.perplexity import (
    CrossFittedNgram,
    WittenBellModel,
    ngram_tokens,
    witten_bell_perplexity,
)
from instructmining.indicators.registry import create
from instructmining.records import content_id, make_record

WORDS = ["a", "b", "c", "d"]
UNSEEN = ["x", "y"]  # never in a training text
train_text = st.lists(st.sampled_from(WORDS), max_size=8)
any_text = st.lists(st.sampled_from(WORDS + UNSEEN), max_size=8)

STRINGS = [
    "The cat sat on the mat.",
    "A dog sat on the mat, and the cat ran.",
    "The river runs to the sea.",
    "Rain falls on the old bridge.",
    "The cat watched the river.",
    "Two apples and a pear.",
    "",
    "The old bridge crosses the river.",
    "Zebras graze; the cat doesn't care!",
    "Write a Python function: def f(x): return x * 2",
]


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Bit-identical values, NaN in the same places."""
    assert got.shape == want.shape and got.dtype == np.float64
    ok = np.isfinite(want)
    rel = np.abs(got[ok] - want[ok]) / want[ok] if ok.any() else np.zeros(1)
    assert np.array_equal(got, want, equal_nan=True), f"max relative error {rel.max():.3g}"


def reference_values(train: list, test: list, order: int) -> np.ndarray:
    """Today's computation: training texts in group -1, the scored texts in group 0."""
    groups = np.array([-1] * len(train) + [0] * len(test))
    return witten_bell_perplexity(train + test, groups, order, test_groups=[0])[len(train) :]


def zipf_corpus(seed: int, n: int, vocab: int = 12, max_len: int = 12) -> list[list[str]]:
    """Texts over a small Zipf-weighted vocabulary, so n-grams repeat; some texts empty."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1)
    weights /= weights.sum()
    return [
        [f"w{j}" for j in rng.choice(vocab, size=rng.integers(0, max_len + 1), p=weights)]
        for _ in range(n)
    ]


# --- one model fitted on a training set ----------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    train=st.lists(train_text, max_size=8),
    test=st.lists(any_text, max_size=6),
    order=st.integers(1, 4),
)
def test_fitted_model_equals_witten_bell_perplexity(train, test, order):
    got = WittenBellModel.fit(train, order).perplexity(test)
    assert_same(got, reference_values(train, test, order))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_model_on_larger_random_corpora(seed, order):
    texts = zipf_corpus(seed, 300)
    # unseen words: alone, in the middle of seen n-grams, and at the start of a history
    test = [*texts[200:], ["q"], ["w0", "q", "w0", "w1"], ["q", "q", "w0"], []]
    got = WittenBellModel.fit(texts[:200], order).perplexity(test)
    want = reference_values(texts[:200], test, order)
    assert np.isfinite(want).all()
    assert_same(got, want)


@pytest.mark.parametrize("order", [1, 3])
def test_empty_and_degenerate_training_sets(order):
    test = [["a", "b"], [], ["x"]]
    # no training text: nothing to fit on (today's "group with no training tokens")
    assert np.isnan(WittenBellModel.fit([], order).perplexity(test)).all()
    # training texts that are all empty still train </s>
    for train in ([[]], [[], []], [["a"]]):
        assert_same(
            WittenBellModel.fit(train, order).perplexity(test), reference_values(train, test, order)
        )
    assert WittenBellModel.fit([["a"]], order).perplexity([]).shape == (0,)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_real_tokenizer_and_the_reference_backend(tmp_path, order):
    train = [ngram_tokens(s) for s in STRINGS[:7]]
    test = [ngram_tokens(s) for s in STRINGS[5:]]
    model = WittenBellModel.fit(train, order)
    assert_same(model.perplexity(test), reference_values(train, test, order))
    # the indicator's reference backend, fitted on the same file
    ref = tmp_path / "ref.jsonl"
    ref.write_text(
        "".join(json.dumps({"instruction": "q", "output": s}) + "\n" for s in STRINGS[:7])
    )
    records = [make_record("q", output=s) for s in STRINGS[5:]]
    assert_same(
        model.perplexity(test), create("perplexity", reference=str(ref), order=order).score(records)
    )


@settings(max_examples=40, deadline=None)
@given(
    train=st.lists(train_text, min_size=1, max_size=8),
    test=st.lists(any_text, max_size=12),
    order=st.integers(1, 4),
    cuts=st.lists(st.integers(0, 12), max_size=4),
)
def test_scoring_is_independent_of_batching(train, test, order, cuts):
    model = WittenBellModel.fit(train, order)
    whole = model.perplexity(test)
    bounds = [0, *sorted(c for c in cuts if c <= len(test)), len(test)]
    parts = [model.perplexity(test[a:b]) for a, b in pairwise(bounds)]
    assert np.array_equal(np.concatenate(parts), whole)
    assert np.array_equal(np.array([model.perplexity([t])[0] for t in test]), whole)


def test_fitted_model_keeps_only_counts():
    train = zipf_corpus(3, 50)
    model = WittenBellModel.fit(train, 3)
    n_tokens = sum(len(t) + 1 for t in train)
    assert model.n_tokens == n_tokens
    for level in model.levels:
        assert len(level.histories) <= n_tokens and len(level.grams) <= n_tokens
        assert np.all(np.diff(level.histories) > 0) and np.all(np.diff(level.grams) > 0)
        assert np.all(level.context_counts > 0)
    with pytest.raises(ValueError, match="order"):
        WittenBellModel.fit(train, 0)


# --- cross-fitting ---------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    texts=st.lists(train_text, max_size=12),
    folds=st.integers(1, 4),
    order=st.integers(1, 4),
)
def test_cross_fitted_equals_witten_bell_perplexity(data, texts, folds, order):
    labels = np.array(
        data.draw(st.lists(st.integers(0, folds - 1), min_size=len(texts), max_size=len(texts))),
        dtype=np.int64,
    )
    got = CrossFittedNgram.fit(texts, labels, order, folds).perplexity(texts, labels)
    assert_same(got, witten_bell_perplexity(texts, labels, order, test_groups=range(folds)))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_cross_fitted_on_larger_random_corpora(seed, order):
    texts = zipf_corpus(seed, 400, vocab=20)
    labels = np.random.default_rng(seed + 100).integers(0, 5, len(texts))
    model = CrossFittedNgram.fit(texts, labels, order, 5)
    got = model.perplexity(texts, labels)
    assert_same(got, witten_bell_perplexity(texts, labels, order, test_groups=range(5)))
    # scoring batch by batch, in any order, gives the same values
    perm = np.random.default_rng(seed).permutation(len(texts))
    batches = [perm[i : i + 37] for i in range(0, len(perm), 37)]
    again = np.empty(len(texts))
    for b in batches:
        again[b] = model.perplexity([texts[i] for i in b], labels[b])
    assert np.array_equal(again, got)


def test_cross_fitted_a_fold_holding_everything_is_nan():
    texts = [["a", "b"], ["b"], []]
    got = CrossFittedNgram.fit(texts, [1, 1, 1], 2, 3).perplexity([*texts, ["a"]], [1, 1, 1, 0])
    assert np.isnan(got[:3]).all() and np.isfinite(got[3])
    # fold 0 had no training text of its own: its model is fitted on all the texts
    assert_same(got[3:], WittenBellModel.fit(texts, 2).perplexity([["a"]]))


def test_cross_fitted_matches_the_indicator_and_scores_new_records():
    records = [make_record(f"Say something {i}", output=s) for i, s in enumerate(STRINGS)]
    texts = [ngram_tokens(r.output) for r in records]
    labels = np.array([int(content_id(r.instruction, r.input, r.output), 16) % 5 for r in records])
    model = CrossFittedNgram.fit(texts, labels, 3, 5)
    assert_same(model.perplexity(texts, labels), create("perplexity").score(records))
    # a record outside the training set is scored by the model of its fold
    new = ngram_tokens("The cat crosses the old river.")
    for f in range(5):
        want = reference_values([t for t, g in zip(texts, labels, strict=True) if g != f], [new], 3)
        assert_same(model.perplexity([new], [f]), want)


def test_cross_fitted_input_checks():
    texts = [["a"], ["b"]]
    with pytest.raises(ValueError, match="folds"):
        CrossFittedNgram.fit(texts, [0, 1], 2, 0)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        CrossFittedNgram.fit(texts, [0, 2], 2, 2)
    with pytest.raises(ValueError, match="one per text"):
        CrossFittedNgram.fit(texts, [0], 2, 2)
    model = CrossFittedNgram.fit(texts, [0, 1], 2, 2)
    assert model.folds == 2
    with pytest.raises(ValueError, match=r"0\.\.1"):
        model.perplexity(texts, [0, -1])
    with pytest.raises(ValueError, match="one per text"):
        model.perplexity(texts, [0.0, 1.0])
    assert model.perplexity([], []).shape == (0,)
