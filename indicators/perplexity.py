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
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any

import numpy as np

from instructmining.indicators.base import Indicator
from instructmining.indicators.keys import FIT_SAMPLE
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
        self.n_records_: int | None = None
        self._whole: dict[str, float] = {}
        self._model: CrossFittedNgram | None = None
        self._scheme()  # a wrong scheme fails here

    def _scheme(self) -> str:
        return parse(self.model or NGRAM, TOKEN_SCORER, indicator=self.name).scheme

    @property
    def backend(self) -> str:
        scheme = self._scheme()
        return "causal-lm" if scheme in ("hf", "gguf") else scheme

    def set_dependent(self) -> bool:
        return self.backend == NGRAM and self.reference is None

    def score(self, records: Sequence[Record]) -> np.ndarray:
        self.truncated_ = 0
        self.truncated_mask_ = np.zeros(len(records), dtype=bool)
        if self.backend == NGRAM:
            return self._score_ngram(records)
        return self._score_causal_lm(records)

    # --- n-gram backend -------------------------------------------------------------------

    def _check_ngram(self) -> None:
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(
                f"The 'order' parameter of perplexity must be an int >= 1. Got {self.order!r}."
            )
        if self.reference is None and (not isinstance(self.folds, int) or self.folds < 2):
            raise ValueError(
                f"The 'folds' parameter of perplexity must be an int >= 2. Got {self.folds!r}."
            )

    def _score_ngram(self, records: Sequence[Record]) -> np.ndarray:
        self._check_ngram()
        if not records:
            return np.empty(0)
        if self.reference is None:
            return self.score_phased(records)
        texts = [ngram_tokens(r.output) for r in records]
        if self._reference_tokens is None:
            from instructmining.readers import read_records

            refs = read_records(str(self.reference)).records
            self._reference_tokens = [ngram_tokens(r.output) for r in refs]
        ref = self._reference_tokens
        # the reference is group -1 (always trained on), the records group 0 (scored)
        groups = np.array([-1] * len(ref) + [0] * len(texts))
        values = witten_bell_perplexity(ref + texts, groups, self.order, test_groups=[0])
        return values[len(ref) :]

    # --- phases (n-gram cross-fitted on the scored set) ------------------------------------
    # A set of at most FIT_SAMPLE records is cross-fitted in one pass by `fit` (exactly
    # the values of one call); a larger set fits one model per fold on its key-ordered
    # sample and scores every record, batch by batch, with the model of its fold.

    def phased(self) -> bool:
        return self.set_dependent()

    def fit_size(self) -> int | None:
        return FIT_SAMPLE

    def params(self) -> dict[str, Any]:
        """Settings that fix the values of the chosen backend (others would only split caches)."""
        unused = (
            ("max_length", "dtype", "template")
            if self.backend == NGRAM
            else ("order", "folds", "reference")
        )
        out = {k: v for k, v in super().params().items() if k not in unused}
        if self.set_dependent() and (self.n_records_ or 0) > FIT_SAMPLE:
            out["fit_sample"] = FIT_SAMPLE  # fitted on a sample: other values than the set's
        return out

    def expect(self, n_records: int) -> None:
        self.n_records_ = n_records

    def _folds_of(self, records: Sequence[Record]) -> np.ndarray:
        return np.array(
            [int(content_id(r.instruction, r.input, r.output), 16) % self.folds for r in records],
            dtype=np.int64,
        )

    def fit(self, records: Sequence[Record], n_total: int) -> None:
        self._check_ngram()
        self.expect(n_total)
        texts = [ngram_tokens(r.output) for r in records]
        folds = self._folds_of(records)
        self._whole = {}
        self._model = None
        if n_total <= len(records):
            values = witten_bell_perplexity(texts, folds, self.order, test_groups=range(self.folds))
            self._whole = {
                content_id(r.instruction, r.input, r.output): float(v)
                for r, v in zip(records, values, strict=True)
            }
        else:
            self._model = CrossFittedNgram.fit(texts, folds, self.order, self.folds)

    def transform(self, records: Sequence[Record]) -> np.ndarray:
        """Each record's perplexity under the model of its fold."""
        self.truncated_ = 0
        self.truncated_mask_ = np.zeros(len(records), dtype=bool)
        if self._model is None:
            if not self._whole and records:
                raise RuntimeError("perplexity: transform before fit")
            return np.array(
                [self._whole[content_id(r.instruction, r.input, r.output)] for r in records],
                dtype=np.float64,
            )
        texts = [ngram_tokens(r.output) for r in records]
        return self._model.perplexity(texts, self._folds_of(records))

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


@register
class LogPerplexity(Perplexity):
    """log(perplexity): the mean NLL of the output's tokens, in nats. Same settings and backends.

    Why a second indicator: a rule works on a dataset's mean, and perplexity is
    heavy-tailed, so one garbled or off-language record can lift a dataset's mean
    perplexity tenfold; the mean of log-perplexity (the log of the geometric mean)
    moves with the typical record. The engine scores and caches `perplexity` and
    takes the log, so asking for both costs one computation.
    """

    name = "log_perplexity"
    description = "mean negative log-likelihood (nats per token) of the output given the prompt"

    def derived_from(self) -> Indicator:
        return Perplexity(**self.settings())

    def derive(self, values: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.asarray(values, dtype=np.float64))

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return self.derive(super().score(records))


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


# --- fitted models: train once, score any batch later ---------------------------------------

_OOV = 2  # a fitted model's one id for every word unseen in its training texts
_FIRST_WORD = 3  # ids of the training vocabulary start here


def _fit_vocabulary(texts: Sequence[Sequence[str]]) -> dict[str, int]:
    """Word ids of the training texts, in order of first occurrence."""
    first_seen = dict.fromkeys(chain.from_iterable(texts))
    return {w: i for i, w in enumerate(first_seen, start=_FIRST_WORD)}


def _encode(texts: Sequence[Sequence[str]], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the predicted positions (each token, then the text's </s>) and positions per text."""
    n = len(texts)
    lengths = np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=n)
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if n else 0
    words = np.full(total, _EOS, dtype=np.int64)
    is_token = np.ones(total, dtype=bool)
    is_token[ends - 1] = False
    ids = map(vocab.get, chain.from_iterable(texts), repeat(_OOV))
    words[is_token] = np.fromiter(ids, dtype=np.int64, count=total - n)
    return words, lengths


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Index of each position within its text."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _previous(words: np.ndarray, offset: np.ndarray, back: int) -> np.ndarray:
    """The word `back` positions earlier in the same text, <s> before its start."""
    prev = np.full(len(words), _BOS, dtype=np.int64)
    ok = offset >= back
    prev[ok] = words[np.nonzero(ok)[0] - back]
    return prev


def _find(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query in the sorted `keys`; -1 where absent."""
    if len(keys) == 0:
        return np.full(len(query), -1, dtype=np.int64)
    # sorted queries: searchsorted starts from the previous hit (~10x faster on large tables)
    order = np.argsort(query)
    idx = np.empty(len(query), dtype=np.int64)
    idx[order] = np.searchsorted(keys, query[order])
    idx = np.minimum(idx, len(keys) - 1)
    return np.where(keys[idx] == query, idx, -1)


@dataclass(frozen=True, slots=True)
class _Level:
    """Training counts of one history length; a history's code is its index in `histories`."""

    histories: np.ndarray  # sorted keys: shorter history's code * base + the word further back
    context_counts: np.ndarray  # tokens seen after each history (all > 0)
    type_counts: np.ndarray  # distinct words seen after each history
    grams: np.ndarray  # sorted keys: history code * base + word
    gram_counts: np.ndarray


class WittenBellModel:
    """The interpolated Witten-Bell n-gram model of `witten_bell_perplexity`, fitted once.

    `fit` keeps only count tables and the training vocabulary, so any number of texts
    can be scored later, batch by batch, in memory that grows with the training set and
    not with the scored set. Values equal `witten_bell_perplexity` with the training
    texts in a group that is never scored: same formulas, same floating-point operations.

    Stable codes between fit and scoring: every word unseen in training gets one id
    (`_OOV`) and every history unseen in training the code -1. This gives the same
    probabilities as the per-call vocabulary of `witten_bell_perplexity`: there an
    unseen word has training count 0 and so has every n-gram and history containing it
    (a history extends a shorter one, so an unseen history stays unseen at every
    longer order); all these counts are 0 whatever the word, so its identity never
    matters.
    """

    def __init__(
        self, order: int, vocab: dict[str, int], unigram: np.ndarray, levels: Sequence[_Level]
    ) -> None:
        self.order = order
        self.vocab = vocab
        self.unigram = unigram  # training count of each word id
        self.levels = tuple(levels)  # history lengths 1 .. order - 1
        self.n_tokens = int(unigram.sum())
        self.n_types = int(np.count_nonzero(unigram))
        self.base = len(vocab) + _FIRST_WORD

    @classmethod
    def fit(cls, texts: Sequence[Sequence[str]], order: int) -> WittenBellModel:
        """Count the n-grams of `texts` (token lists, each closed by </s>, <s>-padded)."""
        vocab = _fit_vocabulary(texts)
        return cls._fit_ids(vocab, *_encode(texts, vocab), order)

    @classmethod
    def _fit_ids(
        cls, vocab: dict[str, int], words: np.ndarray, lengths: np.ndarray, order: int
    ) -> WittenBellModel:
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"An n-gram order must be an int >= 1. Got {order!r}.")
        base = len(vocab) + _FIRST_WORD
        count = np.int32 if len(words) < 2**31 else np.int64
        offset = _offsets(lengths)
        hist = np.zeros(len(words), dtype=np.int64)  # the empty history
        levels = []
        for back in range(1, order):
            keys = hist * base + _previous(words, offset, back)
            histories, inverse = np.unique(keys, return_inverse=True)
            hist = inverse.astype(np.int64).reshape(-1)
            grams, gram_counts = np.unique(hist * base + words, return_counts=True)
            n_hist = len(histories)
            levels.append(
                _Level(
                    histories=histories,
                    context_counts=np.bincount(hist, minlength=n_hist).astype(count),
                    type_counts=np.bincount(grams // base, minlength=n_hist).astype(count),
                    grams=grams,
                    gram_counts=gram_counts.astype(count),
                )
            )
        unigram = np.bincount(words, minlength=base).astype(count)
        return cls(order, vocab, unigram, levels)

    def perplexity(self, texts: Sequence[Sequence[str]]) -> np.ndarray:
        """Per-text perplexity of `texts` (all NaN when the model saw no training text)."""
        return self._score_ids(*_encode(texts, self.vocab))

    def _score_ids(self, words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        n = len(lengths)
        if self.n_tokens == 0:
            return np.full(n, np.nan)
        base = self.base
        offset = _offsets(lengths)
        # the arithmetic of `_witten_bell_logprob`, step by step, so the values are identical
        unigram = self.unigram[words].astype(np.float64)
        prob = (unigram + 1.0) / (self.n_tokens + self.n_types + 1.0)
        hist = np.zeros(len(words), dtype=np.int64)  # the empty history
        for back, level in enumerate(self.levels, start=1):
            known = hist >= 0
            keys = np.where(known, hist * base + _previous(words, offset, back), -1)
            hist = _find(level.histories, keys)
            known = hist >= 0
            code = np.where(known, hist, 0)
            c_h = np.where(known, level.context_counts[code], 0).astype(np.float64)
            t_h = np.where(known, level.type_counts[code], 0).astype(np.float64)
            gram = _find(level.grams, np.where(known, hist * base + words, -1))
            c_hw = np.where(gram >= 0, level.gram_counts[gram], 0).astype(np.float64)
            seen = c_h > 0
            prob = np.where(seen, (c_hw + t_h * prob) / np.where(seen, c_h + t_h, 1.0), prob)
        text_of = np.repeat(np.arange(n), lengths)
        sums = np.bincount(text_of, weights=np.log(prob), minlength=n)
        return np.exp(-sums / lengths)


def _fold_labels(folds: Any, n: int, n_folds: int) -> np.ndarray:
    labels = np.asarray(folds)
    if labels.size == 0:
        labels = labels.astype(np.int64)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Fold labels must be {n} integers (one per text).")
    if n and (labels.min() < 0 or labels.max() >= n_folds):
        raise ValueError(f"Fold labels must lie in 0..{n_folds - 1}.")
    return labels


class CrossFittedNgram:
    """One `WittenBellModel` per fold f, fitted on the training texts whose fold is not f.

    Scoring a text with the model of its own fold equals `witten_bell_perplexity`'s
    cross-fitting when the scored texts are the training texts, and extends it to any
    other texts (e.g. a pool scored batch by batch after fitting on a sample of it).
    The fold models share one vocabulary; a word absent from a fold's training texts
    has count 0 there, which is the same as unseen (see `WittenBellModel`).
    """

    def __init__(self, models: Sequence[WittenBellModel]) -> None:
        self.models = tuple(models)

    @property
    def folds(self) -> int:
        return len(self.models)

    @classmethod
    def fit(
        cls, texts: Sequence[Sequence[str]], folds: Any, order: int, n_folds: int
    ) -> CrossFittedNgram:
        """Fit `n_folds` models; `folds` holds each training text's fold, 0..n_folds-1."""
        if not isinstance(n_folds, int) or n_folds < 1:
            raise ValueError(f"The number of folds must be an int >= 1. Got {n_folds!r}.")
        labels = _fold_labels(folds, len(texts), n_folds)
        vocab = _fit_vocabulary(texts)
        words, lengths = _encode(texts, vocab)
        fold_of = np.repeat(labels, lengths)
        models = [
            WittenBellModel._fit_ids(vocab, words[fold_of != f], lengths[labels != f], order)
            for f in range(n_folds)
        ]
        return cls(models)

    def perplexity(self, texts: Sequence[Sequence[str]], folds: Any) -> np.ndarray:
        """Per-text perplexity, each text scored by the model of its fold (`folds`, 0..n-1)."""
        labels = _fold_labels(folds, len(texts), self.folds)
        out = np.full(len(texts), np.nan)
        if not texts:
            return out
        words, lengths = _encode(texts, self.models[0].vocab)
        fold_of = np.repeat(labels, lengths)
        for f, model in enumerate(self.models):
            mine = labels == f
            if mine.any():
                out[mine] = model._score_ids(words[fold_of == f], lengths[mine])
        return out
