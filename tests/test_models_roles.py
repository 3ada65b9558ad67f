"""Each model role on a tiny model, and the one per-process cache of loaded models."""

from __future__ import annotations

import numpy as np
import pytest

from instructmining.indicators.registry import create
from instructmining.models import backends
from instructmining.models.loading import clear_model_cache
from instructmining.models.roles import (
    CAUSAL_LM,
    EMBEDDER,
    PAIR_SCORER,
    TOKEN_SCORER,
    YES_NO_SCORER,
    CausalLM,
    Embedder,
    LoadKey,
    PairScorer,
    TokenScorer,
    YesNoScorer,
)
from instructmining.records import make_record

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RECORDS = [
    make_record("Explain why the sky is blue.", "", "Because of Rayleigh scattering."),
    make_record("Translate into French:", "good morning", "bonjour"),
    make_record("Describe the old bridge.", "", "The old bridge crosses a river. " * 3),
    make_record("Summarise the data.", "two apples and a poem", "A short story."),
]
CPU = {"device": "cpu", "dtype": "fp32"}


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_model_cache()
    yield
    clear_model_cache()


def _load(role, spec, **options):
    return backends.load(role, str(spec), indicator="test", **CPU, **options)


def test_embedder_gives_unit_float32_rows_in_input_order(tiny_sentence_transformer):
    from sentence_transformers import SentenceTransformer

    emb = _load(EMBEDDER, f"st:{tiny_sentence_transformer}")
    assert isinstance(emb, Embedder)
    assert emb.key == LoadKey(EMBEDDER, "st", str(tiny_sentence_transformer), "fp32", "cpu")
    texts = ["a river " * 30, "the cat", "two apples and a poem"]
    got = emb.embed(texts, batch_size=2)
    assert got.dtype == np.float32 and got.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    plain = SentenceTransformer(str(tiny_sentence_transformer), device="cpu")
    np.testing.assert_allclose(got, plain.encode(texts, normalize_embeddings=True), atol=1e-6)
    assert emb.truncated(texts, max_length=4).tolist() == [True, False, True]
    assert not emb.truncated(texts).any()  # the model's own limit (128)
    # a bare path is the same model: the same object
    assert _load(EMBEDDER, tiny_sentence_transformer) is emb


def test_token_scorer_equals_the_causal_scorer(tiny_causal_lm):
    from instructmining.models.causal import CausalScorer

    settings = {"template": "plain", "max_length": 1024, "token_budget": 8192}
    scorer = _load(TOKEN_SCORER, f"hf:{tiny_causal_lm}", **settings)
    assert isinstance(scorer, TokenScorer) and scorer.key.options == tuple(sorted(settings.items()))
    direct = CausalScorer(str(tiny_causal_lm), indicator="t", **CPU, **settings)
    for conditional in (True, False):
        got = scorer.score(RECORDS, conditional=conditional)
        want = direct.score(RECORDS, conditional=conditional)
        np.testing.assert_array_equal(got.nll_sum, want.nll_sum)
        np.testing.assert_array_equal(got.tokens, want.tokens)
    # its model is the causal LM role's, loaded once
    lm = _load(CAUSAL_LM, tiny_causal_lm)
    assert isinstance(lm, CausalLM) and scorer.load()[1] is lm.model


def test_pair_scorer_scores_prompt_response_pairs(tiny_reward_model):
    scorer = _load(PAIR_SCORER, tiny_reward_model)
    assert isinstance(scorer, PairScorer)
    got = scorer.score([r.prompt for r in RECORDS], [r.output for r in RECORDS], batch_size=3)
    assert got.template == "oasst" and got.values.dtype == np.float64
    assert not got.truncated.any()
    ind = create("reward", model=str(tiny_reward_model), batch_size=3, **CPU)
    np.testing.assert_array_equal(ind.score(RECORDS), got.values)
    cut = scorer.score(["Explain. " * 40], ["a river " * 40], max_length=32)
    assert cut.truncated.tolist() == [True]


def test_yes_no_scorer_gives_probabilities(tiny_t5):
    from instructmining.indicators.unieval import unieval_input

    scorer = _load(YES_NO_SCORER, f"hf:{tiny_t5}")
    assert isinstance(scorer, YesNoScorer)
    texts = [unieval_input("naturalness", r) for r in RECORDS]
    got = scorer.score(texts, batch_size=2)
    assert ((got.values > 0) & (got.values < 1)).all() and not got.truncated.any()
    ind = create("naturalness", model=str(tiny_t5), batch_size=2, **CPU)
    np.testing.assert_array_equal(ind.score(RECORDS), got.values)
    assert scorer.score(texts, max_length=8).truncated.all()


# --- one cache ---------------------------------------------------------------------------------


def _count_calls(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def test_perplexity_ifd_and_generation_load_one_causal_lm(tiny_causal_lm, monkeypatch):
    from instructmining.generation.backends.hf_local import HFBackend

    calls = _count_calls(monkeypatch, transformers.AutoModelForCausalLM, "from_pretrained")
    path = str(tiny_causal_lm)
    create("perplexity", model=path, template="plain", **CPU).score(RECORDS)
    create("ifd", model=f"hf:{path}", template="auto", max_length=64, **CPU).score(RECORDS)
    HFBackend(model=path, device="cpu", dtype="fp32")._load()
    assert len(calls) == 1


def test_two_knn_indicators_load_one_embedder(tiny_sentence_transformer, monkeypatch):
    import sentence_transformers

    built = []

    class Counting(sentence_transformers.SentenceTransformer):
        def __init__(self, *args, **kwargs):
            built.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Counting)
    path = str(tiny_sentence_transformer)
    short = create("knn6", model=path, k=1, max_length=16, **CPU).score(RECORDS)
    full = create("knn6", model=f"st:{path}", k=2, **CPU).score(RECORDS)
    again = create("knn6", model=path, k=1, max_length=16, **CPU).score(RECORDS)
    assert len(built) == 1
    np.testing.assert_array_equal(short, again)  # the shared model's limit is per call
    assert np.isfinite(full).all()


def test_a_different_dtype_is_a_different_model(tiny_t5):
    fp32 = _load(YES_NO_SCORER, tiny_t5)
    bf16 = backends.load(YES_NO_SCORER, str(tiny_t5), indicator="t", device="cpu", dtype="bf16")
    assert fp32 is not bf16 and bf16.key.dtype == "bf16"
    assert _load(YES_NO_SCORER, tiny_t5) is fp32
