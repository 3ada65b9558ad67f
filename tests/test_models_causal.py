"""Causal-LM token scoring: batching, the projected-positions shortcut, memo and IFD."""

from __future__ import annotations

import math

import numpy as np
import pytest

from instructmining.models import causal
from instructmining.models.causal import CausalScorer
from instructmining.models.loading import clear_model_cache
from instructmining.records import Record

RECORDS = [
    Record("Name a colour.", "", "Blue is a colour of the sky."),
    Record("Add the numbers.", "2 and 3", "The sum is 5."),
    Record("Say nothing.", "", ""),
    Record("Repeat after me.", "hello there", "hello there " * 12),
    Record("Translate to French.", "good morning", "bonjour"),
]


def _scorer(path, **kw) -> CausalScorer:
    return CausalScorer(str(path), indicator="perplexity", device="cpu", dtype="fp32", **kw)


def _hand_nll(path, record: Record, conditional: bool) -> float:
    """Summed NLL of the output tokens with a plain full forward pass, one record at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if conditional:
        prompt = list(tok(record.prompt + "\n\n").input_ids)
        if tok.bos_token_id is not None and prompt[:1] != [tok.bos_token_id]:
            prompt.insert(0, tok.bos_token_id)
    else:
        prompt = [start]
    out = list(tok(record.output, add_special_tokens=False).input_ids)
    ids = torch.tensor([prompt + out])
    with torch.inference_mode():
        logp = torch.log_softmax(lm(input_ids=ids).logits[0].float(), -1)
    return -sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(out))


@pytest.mark.parametrize("conditional", [True, False])
def test_nll_matches_a_plain_forward_pass(tiny_causal_lm, conditional):
    got = _scorer(tiny_causal_lm, template="plain").score(RECORDS, conditional=conditional)
    for i, r in enumerate(RECORDS):
        if not r.output:
            assert got.tokens[i] == 0 and math.isnan(got.mean_nll[i])
            continue
        assert got.nll_sum[i] == pytest.approx(_hand_nll(tiny_causal_lm, r, conditional), rel=1e-4)


def test_projecting_only_scored_positions_equals_the_full_logits(tiny_causal_lm, monkeypatch):
    _tok, lm, _ = _scorer(tiny_causal_lm).load()
    assert causal.split_head(lm) is not None  # the shortcut is taken for GPT-2
    short = _scorer(tiny_causal_lm).score(RECORDS)
    monkeypatch.setattr(causal, "split_head", lambda lm: None)
    full = _scorer(tiny_causal_lm).score(RECORDS)
    np.testing.assert_allclose(short.nll_sum, full.nll_sum, rtol=1e-5)
    np.testing.assert_array_equal(short.tokens, full.tokens)


def test_token_budget_changes_batches_not_values(tiny_causal_lm):
    one = _scorer(tiny_causal_lm, token_budget=1).score(RECORDS)  # one record per batch
    many = _scorer(tiny_causal_lm, token_budget=100_000).score(RECORDS)
    np.testing.assert_allclose(one.nll_sum, many.nll_sum, rtol=1e-5)


def test_memo_scores_each_pair_once(tiny_causal_lm, monkeypatch):
    s = _scorer(tiny_causal_lm)
    first = s.score(RECORDS)
    monkeypatch.setattr(s, "_run", lambda *a, **k: pytest.fail("scored twice"))
    again = s.score(list(reversed(RECORDS)))
    np.testing.assert_array_equal(again.nll_sum[::-1], first.nll_sum)


def test_truncation_keeps_the_output_start_and_flags_it(tiny_causal_lm):
    got = _scorer(tiny_causal_lm, max_length=12).score(RECORDS)
    assert got.truncated[3] and got.tokens[3] == 11  # the output keeps max_length - 1 tokens
    assert not _scorer(tiny_causal_lm, max_length=1024).score(RECORDS).truncated.any()


def test_ifd_is_the_ratio_of_the_two_perplexities(tiny_causal_lm):
    from instructmining.indicators.ifd import IFD
    from instructmining.indicators.perplexity import Perplexity

    clear_model_cache()
    kw = {"model": str(tiny_causal_lm), "device": "cpu", "dtype": "fp32", "template": "plain"}
    ppl = Perplexity(**kw).score(RECORDS)
    ifd = IFD(**kw).score(RECORDS)
    alone = _scorer(tiny_causal_lm, template="plain").score(RECORDS, conditional=False)
    expected = ppl / np.exp(alone.mean_nll)
    np.testing.assert_allclose(ifd, expected, rtol=1e-5)
    assert np.isnan(ifd[2])  # empty output


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_causal_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    s = _scorer(tiny_causal_lm)
    assert s.layout(tok) == "plain"
    tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    )
    assert s.layout(tok) == "chat"
    ids = s._prefix(tok, RECORDS[1], conditional=True)
    assert tok.decode(ids).startswith("<user>Add the numbers.")
    with pytest.raises(ValueError, match="template must be one of"):
        _scorer(tiny_causal_lm, template="fancy")
