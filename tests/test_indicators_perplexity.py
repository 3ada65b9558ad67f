import json
import math
from collections import Counter

import numpy as np
import pytest

from instructmining.indicators.perplexity import (
    ngram_tokens,
    prompt_text,
    witten_bell_perplexity,
)
from instructmining.indicators.registry import create
from instructmining.records import content_id, make_record

SENTENCES = [
    "The cat sat on the mat.",
    "A dog sat on the mat, and the cat ran.",
    "The river runs to the sea.",
    "Rain falls on the old bridge.",
    "The cat watched the river.",
    "Two apples and a pear.",
    "",
    "The old bridge crosses the river.",
]


class NaiveWittenBell:
    """Interpolated Witten-Bell written directly from the formulas, with dictionaries."""

    def __init__(self, texts, order):
        self.order = order
        self.c = [Counter() for _ in range(order + 1)]  # c[m][(h, w)], h a tuple of m-1 tokens
        self.uni = Counter()
        for toks in texts:
            padded = ["<s>"] * (order - 1) + list(toks) + ["</s>"]
            for j in range(order - 1, len(padded)):
                w = padded[j]
                self.uni[w] += 1
                for m in range(2, order + 1):
                    self.c[m][(tuple(padded[j - m + 1 : j]), w)] += 1
        self.n = sum(self.uni.values())
        self.ctx = [Counter() for _ in range(order + 1)]
        self.types = [Counter() for _ in range(order + 1)]
        for m in range(2, order + 1):
            for (h, _w), k in self.c[m].items():
                self.ctx[m][h] += k
                self.types[m][h] += 1

    def prob(self, history, w):
        p = (self.uni.get(w, 0) + 1) / (self.n + len(self.uni) + 1)
        for m in range(2, self.order + 1):
            h = tuple(history[len(history) - (m - 1) :])
            if self.ctx[m][h] > 0:
                p = (self.c[m][(h, w)] + self.types[m][h] * p) / (self.ctx[m][h] + self.types[m][h])
        return p

    def perplexity(self, toks):
        padded = ["<s>"] * (self.order - 1) + list(toks) + ["</s>"]
        logs = [
            math.log(self.prob(padded[j - self.order + 1 : j], padded[j]))
            for j in range(self.order - 1, len(padded))
        ]
        return math.exp(-sum(logs) / len(logs))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_vectorised_model_equals_the_formulas(order):
    texts = [ngram_tokens(s) for s in SENTENCES]
    groups = np.array([0, 1, 0, 1, 2, 2, 0, 1])
    got = witten_bell_perplexity(texts, groups, order, test_groups=range(3))
    want = [
        NaiveWittenBell(
            [t for t, g in zip(texts, groups, strict=True) if g != gi], order
        ).perplexity(texts[i])
        for i, gi in enumerate(groups)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_probabilities_sum_to_one():
    model = NaiveWittenBell([ngram_tokens(s) for s in SENTENCES], 3)
    vocab = [*model.uni, "<unseen>"]  # every unseen word is one class
    for history in (["<s>", "<s>"], ["the", "cat"], ["on", "the"], ["zzz", "the"]):
        assert sum(model.prob(history, w) for w in vocab) == pytest.approx(1.0, abs=1e-12)


def test_cross_fitted_indicator_uses_content_hash_folds():
    records = [make_record(f"Say something {i}", output=s) for i, s in enumerate(SENTENCES)]
    ind = create("perplexity")
    assert ind.backend == "ngram" and ind.set_dependent()
    got = ind.score(records)
    folds = np.array([int(content_id(r.instruction, r.input, r.output), 16) % 5 for r in records])
    texts = [ngram_tokens(r.output) for r in records]
    want = witten_bell_perplexity(texts, folds, 3, range(5))
    np.testing.assert_array_equal(got, want)
    # independent of input order
    perm = [3, 1, 7, 0, 2, 6, 5, 4]
    np.testing.assert_array_equal(ind.score([records[i] for i in perm]), got[perm])
    assert np.all(got > 1) and got.dtype == np.float64
    # a lone record has nothing to be fitted on
    assert np.isnan(ind.score(records[:1])).all()
    assert ind.score([]).shape == (0,)
    with pytest.raises(ValueError, match="'folds' parameter"):
        create("perplexity", folds=1).score(records)


def test_log_perplexity_is_the_log_and_shares_perplexitys_cache(tmp_path):
    from instructmining.indicators.engine import score_records

    records = [make_record(f"Say something {i}", output=s) for i, s in enumerate(SENTENCES)]
    want = np.log(create("perplexity").score(records))
    np.testing.assert_allclose(create("log_perplexity").score(records), want, rtol=1e-12)
    cache = tmp_path / "scores.sqlite"
    both = score_records(records, ["perplexity", "log_perplexity"], cache=cache)
    np.testing.assert_allclose(both.columns["log_perplexity"], want, rtol=1e-12)
    np.testing.assert_allclose(np.log(both.columns["perplexity"]), want, rtol=1e-12)
    runs = both.run_dicts()  # one computation, counted once
    assert runs["perplexity"]["computed"] == len(records)
    assert runs["log_perplexity"]["computed"] == 0
    assert runs["log_perplexity"]["derived_from"] == "perplexity"
    alone = score_records(records, ["log_perplexity"], cache=cache)  # served from the cache
    assert alone.run_dicts()["log_perplexity"]["cached"] == len(records)
    assert alone.run_dicts()["log_perplexity"]["computed"] == 0
    np.testing.assert_allclose(alone.columns["log_perplexity"], want, rtol=1e-12)
    # its own name in the settings a rule stores, the rest as perplexity's
    params = create("log_perplexity").params()
    assert params["name"] == "log_perplexity"
    assert {k: v for k, v in params.items() if k != "name"} == {
        k: v for k, v in create("perplexity").params().items() if k != "name"
    }


def test_reference_corpus_backend(tmp_path):
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"instruction": "x", "output": s}) + "\n" for s in SENTENCES))
    ind = create("perplexity", reference=str(ref))
    assert not ind.set_dependent()
    records = [make_record("q", output="The cat sat on the bridge."), make_record("q", output="")]
    model = NaiveWittenBell([ngram_tokens(s) for s in SENTENCES], 3)
    want = [model.perplexity(ngram_tokens(r.output)) for r in records]
    np.testing.assert_allclose(ind.score(records), want, rtol=1e-10)
    np.testing.assert_allclose(ind.score(records[1:]), want[1:], rtol=1e-10)


def _direct_perplexity(path, record):
    """exp(mean NLL) of the output tokens with plain transformers calls, one record, no padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    prompt = tok(prompt_text(record)).input_ids
    if tok.bos_token_id is not None and prompt[:1] != [tok.bos_token_id]:
        prompt = [tok.bos_token_id, *prompt]
    output = tok(record.output, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + output])
    with torch.no_grad():
        logp = torch.log_softmax(lm(ids).logits[0].double(), dim=-1)
    nll = [-logp[t - 1, ids[0, t]].item() for t in range(len(prompt), len(prompt) + len(output))]
    return math.exp(sum(nll) / len(nll)) if nll else math.nan


def test_causal_lm_backend_matches_direct_computation(tiny_causal_lm):
    records = [
        make_record("Explain why the sky is blue.", output="Light scatters in the air."),
        make_record("Translate to French", "good morning", output="bonjour"),
        make_record("Write a list of three colours.", output="red, green and blue " * 5),
        make_record("Answer yes or no.", output=""),
    ]
    ind = create("perplexity", model=str(tiny_causal_lm), device="cpu", batch_size=2)
    assert ind.backend == "causal-lm" and not ind.set_dependent()
    got = ind.score(records)
    want = [_direct_perplexity(tiny_causal_lm, r) for r in records]
    np.testing.assert_allclose(got[:3], want[:3], rtol=1e-4)
    assert np.isnan(got[3]) and np.isnan(want[3])  # empty output: nothing to score
    assert ind.truncated_ == 0
    # batch size is runtime-only
    again = create("perplexity", model=str(tiny_causal_lm), device="cpu", batch_size=3)
    assert again.key() == ind.key() and "batch_size" not in ind.params()
    np.testing.assert_allclose(again.score(records), got, rtol=1e-5)
    logged = create("log_perplexity", model=str(tiny_causal_lm), device="cpu", batch_size=2)
    values = logged.score(records)  # the mean NLL in nats; NaN stays NaN
    np.testing.assert_allclose(values[:3], np.log(want[:3]), rtol=1e-4)
    assert np.isnan(values[3])


def test_causal_lm_truncation_keeps_output_and_counts(tiny_causal_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
    long_prompt = make_record("Explain why the sky is blue. " * 20, output="Light scatters.")
    short = make_record("Say hi.", output="hello")
    ind = create("perplexity", model=str(tiny_causal_lm), device="cpu", max_length=24)
    got = ind.score([long_prompt, short])
    assert ind.truncated_ == 1 and ind.truncated_mask_.tolist() == [True, False]
    assert np.isfinite(got).all()
    n_prompt = len(tok(prompt_text(long_prompt)).input_ids)
    assert n_prompt > 24


def test_missing_checkpoint_fails_fast(tmp_path):
    from instructmining.errors import InstructMiningError

    ind = create("perplexity", model=str(tmp_path / "nope"))
    with pytest.raises(InstructMiningError, match="--model perplexity="):
        ind.score([make_record("a", output="b")])


def test_ngram_on_real_data_is_finite(shared_data):
    rows = json.loads((shared_data / "pools" / "alpaca_random_9k.json").read_text())[:400]
    records = [make_record(r["instruction"], r["input"], r["output"]) for r in rows]
    got = create("perplexity").score(records)
    assert np.isfinite(got).all() and (got > 1).all()
