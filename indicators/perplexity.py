"""Perplexity of the response: a causal LM given the prompt, or an offline n-gram model.

Backends
- "ngram" (offline, `model=None` or "ngram"): an interpolated Witten-Bell word
  n-gram model (`order`, default 3) over lower-cased word and punctuation tokens
  of the outputs, each output framed by `<s>` padding and a closing `</s>`. The
  unigram level is add-one smoothed over the training vocabulary plus one
  unknown-word class. Without `reference` it is cross-fitted on the scored set:
  each record falls in one of `folds` folds by a hash of its content (so exact
  duplicates share a fold) and is scored by the model fitted on the outputs of
  the other folds (dataset-level). With `reference` (a data file) the model is
  fitted once on that file's outputs and each record scores on its own.
  The prompt is not used by this backend.
- causal LM (`model` = catalogue name, checkpoint id or path, `hf:...`,
  `gguf:PATH`, or a plugin's token-scorer scheme): the output's
  tokens scored after the prompt, laid out by `template` ("chat": the
  tokenizer's chat template; "plain": `"{instruction}\\n\\n{input}\\n\\n"`;
  "auto": chat when the tokenizer has one); value = exp(mean negative
  log-likelihood of the output tokens). Past `max_length` tokens the prompt is
  cut from the left first, then the output from the right (`truncated_`). The
  scoring itself lives in `instructmining.models.causal`.

Both: value = exp(mean NLL per output token); NaN for an empty output with the
causal LM (no token to score); the n-gram backend always scores `</s>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import register
from instructmining.models.backends import NGRAM, parse
from instructmining.models.roles import TOKEN_SCORER
from instructmining.records import Record, content_id

_TOKEN = re.compile(r"\w+|[^\w\s]")
_BOS, _EOS = 0, 1  # reserved n-gram token ids


def ngram_tokens(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks (the n-gram backend's tokens)."""
    return _TOKEN.findall(text.lower())


def prompt_text(record: Record) -> str:
    """The prompt the causal LM reads before the output (see the module docstring)."""
    return record.prompt + "\n\n"


@register
class Perplexity(Indicator):
    """exp(mean NLL) of the output's tokens. Higher = less predictable (more surprising) text.

    Source: the paper's perplexity (Llama-2-7B, response given the instruction).
    Backends: an offline Witten-Bell word n-gram model cross-fitted on the scored
    set (or fitted on a reference file), or a causal LM checkpoint; see the
    module docstring for the exact definitions. Cost: n-gram ~1-2 s per 10k
    records; a 7B causal LM needs a GPU.
    """

    name = "perplexity"
    description = "exp(mean negative log-likelihood) of the output given the prompt"
    reads = ("instruction", "input", "output")
    direction = "higher = less predictable output"
    needs_model = True
    dataset_level = True  # for the default (cross-fitted n-gram) backend; see set_dependent
    backends = (NGRAM, "causal-lm")
    model_role = TOKEN_SCORER
    runtime_settings = ("device", "batch_size", "token_budget")

    def __init__(
        self,
        *,
        model: str | None = None,
        order: int = 3,
        folds: int = 5,
        reference: str | None = None,
        device: str = "auto",
        batch_size: int = 8,
        max_length: int = 1024,
        dtype: str = "auto",
        template: str = "auto",
        token_budget: int = 8192,
    ) -> None:
        self.model = model
        self.order = order
        self.folds = folds
        self.reference = reference
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.template = template
        self.token_budget = token_budget
        self._reference_tokens: list[list[str]] | None = None
        self._scheme()  # a wrong scheme fails here

    def _scheme(self) -> str:
        return parse(self.model or NGRAM, TOKEN_SCORER, indicator=self.name).scheme

    @property
    def backend(self) -> str:
        scheme = self._scheme()
        return "causal-lm" if scheme in ("hf", "gguf") else scheme

    def set_dependent(self) -> bool:
        return self.backend == NGRAM and self.reference is None

    def params(self) -> dict[str, Any]:
        """Settings that fix the values of the chosen backend (others would only split caches)."""
        unused = (
            ("max_length", "dtype", "template")
            if self.backend == NGRAM
            else ("order", "folds", "reference")
        )
        return {k: v for k, v in super().params().items() if k not in unused}

    def score(self, records: Sequence[Record]) -> np.ndarray:
        self.truncated_ = 0
        self.truncated_mask_ = np.zeros(len(records), dtype=bool)
        if self.backend == NGRAM:
            return self._score_ngram(records)
        return self._score_causal_lm(records)

    # --- n-gram backend -------------------------------------------------------------------

    def _score_ngram(self, records: Sequence[Record]) -> np.ndarray:
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(
                f"The 'order' parameter of perplexity must be an int >= 1. Got {self.order!r}."
            )
        if self.reference is None and (not isinstance(self.folds, int) or self.folds < 2):
            raise ValueError(
                f"The 'folds' parameter of perplexity must be an int >= 2. Got {self.folds!r}."
            )
        if not records:
            return np.empty(0)
        texts = [ngram_tokens(r.output) for r in records]
        if self.reference is not None:
            if self._reference_tokens is None:
                from instructmining.readers import read_records

                refs = read_records(str(self.reference)).records
                self._reference_tokens = [ngram_tokens(r.output) for r in refs]
            ref = self._reference_tokens
            # the reference is group -1 (always trained on), the records group 0 (scored)
            groups = np.array([-1] * len(ref) + [0] * len(texts))
            values = witten_bell_perplexity(ref + texts, groups, self.order, test_groups=[0])
            return values[len(ref) :]
        groups = np.array(
            [int(content_id(r.instruction, r.input, r.output), 16) % self.folds for r in records]
        )
        return witten_bell_perplexity(texts, groups, self.order, test_groups=range(self.folds))

    # --- causal LM backend ----------------------------------------------------------------

    def scorer(self) -> Any:
        """The shared causal-LM token scorer for this indicator's checkpoint and settings."""
        from instructmining.models.causal import scorer_for

        return scorer_for(self)

    def _score_causal_lm(self, records: Sequence[Record]) -> np.ndarray:
        if not records:
            return np.empty(0)
        scored = self.scorer().score(records, conditional=True, progress=self.progress_)
        self.truncated_mask_ = scored.truncated
        self.truncated_ = int(scored.truncated.sum())
        return np.exp(scored.mean_nll)


def witten_bell_perplexity(
    texts: Sequence[Sequence[str]], groups: np.ndarray, order: int, test_groups: Any
) -> np.ndarray:
    """Per-text perplexity under interpolated Witten-Bell n-gram models.

    For each g in `test_groups`, a model is fitted on every text whose group is
    not g and scores the texts of group g; texts in no test group (e.g. -1) are
    training data only (their value is NaN). A group with no training tokens
    scores NaN.
    """
    n = len(texts)
    out = np.full(n, np.nan)
    vocab: dict[str, int] = {}
    # predicted positions: every token of every text and its closing </s>
    lengths = np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=n)
    words = np.empty(int(lengths.sum()), dtype=np.int64)
    pos = 0
    for toks in texts:
        for t in toks:
            words[pos] = vocab.setdefault(t, len(vocab) + 2)
            pos += 1
        words[pos] = _EOS
        pos += 1
    base = len(vocab) + 2
    text_of = np.repeat(np.arange(n), lengths)
    offset = np.arange(len(words)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    # histories of growing length, re-indexed at each step so codes stay small
    hists: list[np.ndarray] = [np.zeros(len(words), dtype=np.int64)]
    for back in range(1, order):
        prev = np.full(len(words), _BOS, dtype=np.int64)
        ok = offset >= back
        prev[ok] = words[np.nonzero(ok)[0] - back]
        _, inverse = np.unique(hists[-1] * base + prev, return_inverse=True)
        hists.append(inverse.astype(np.int64).reshape(-1))
    group_of = np.asarray(groups)[text_of]
    logp = np.full(len(words), np.nan)
    for g in test_groups:
        test = group_of == g
        if not test.any():
            continue
        train = ~test
        if not train.any():
            continue
        logp[test] = _witten_bell_logprob(words, hists, train, test, base)
    sums = np.bincount(text_of, weights=np.nan_to_num(logp, nan=0.0), minlength=n)
    scored = np.bincount(text_of, weights=~np.isnan(logp), minlength=n) == lengths
    out[scored] = np.exp(-sums[scored] / lengths[scored])
    return out


def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    if len(keys) == 0:
        return np.zeros(len(query))
    idx = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[idx] == query, counts[idx], 0).astype(np.float64)


def _witten_bell_logprob(
    words: np.ndarray, hists: list[np.ndarray], train: np.ndarray, test: np.ndarray, base: int
) -> np.ndarray:
    tw = words[train]
    qw = words[test]
    unigram = np.bincount(tw, minlength=base).astype(np.float64)
    n_types = int(np.count_nonzero(unigram))
    # add-one over the training types plus one class for every unseen word
    prob = (unigram[qw] + 1.0) / (len(tw) + n_types + 1.0)
    for hist in hists[1:]:
        th = hist[train]
        qh = hist[test]
        grams, gram_counts = np.unique(th * base + tw, return_counts=True)
        contexts, context_counts = np.unique(th, return_counts=True)
        typed, type_counts = np.unique(grams // base, return_counts=True)
        c_hw = _lookup(grams, gram_counts, qh * base + qw)
        c_h = _lookup(contexts, context_counts, qh)
        t_h = _lookup(typed, type_counts, qh)
        seen = c_h > 0
        prob = np.where(seen, (c_hw + t_h * prob) / np.where(seen, c_h + t_h, 1.0), prob)
    return np.log(prob)
