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
- causal LM (`model` = checkpoint id or path): tokens of the prompt template
  `"{instruction}\\n\\n{input}\\n\\n"` (input and its blank line omitted when
  empty; the tokenizer's special tokens added, BOS prepended when the tokenizer
  has one and did not add it) followed by the output's tokens (tokenised on
  their own, no special tokens); value = exp(mean negative log-likelihood of the
  output tokens), prompt tokens masked. Past `max_length` tokens the prompt is
  cut from the left first, then the output from the right (`truncated_`).

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
from instructmining.records import Record, content_id

NGRAM = "ngram"
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
    runtime_settings = ("device", "batch_size")

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
    ) -> None:
        self.model = model
        self.order = order
        self.folds = folds
        self.reference = reference
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self._reference_tokens: list[list[str]] | None = None

    @property
    def backend(self) -> str:
        return NGRAM if self.model in (None, "", NGRAM) else "causal-lm"

    def set_dependent(self) -> bool:
        return self.backend == NGRAM and self.reference is None

    def params(self) -> dict[str, Any]:
        """Settings that fix the values of the chosen backend (others would only split caches)."""
        unused = (
            ("max_length", "dtype") if self.backend == NGRAM else ("order", "folds", "reference")
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

    def _load(self) -> tuple[Any, Any, str]:
        from instructmining.indicators.models import (
            cached_model,
            load_target,
        )

        spec, device, torch_dtype = load_target(
            str(self.model), indicator=self.name, device=self.device, dtype=self.dtype
        )

        def load() -> tuple[Any, Any]:
            try:
                import transformers
                from transformers import AutoModelForCausalLM, AutoTokenizer
            except ImportError as exc:  # pragma: no cover - part of the models extra
                raise ImportError(
                    "perplexity with a model needs transformers: "
                    "pip install 'instructmining[models]'"
                ) from exc
            dtype_kw = (
                "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
            )
            tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
            lm: Any = AutoModelForCausalLM.from_pretrained(
                spec, trust_remote_code=False, **{dtype_kw: torch_dtype}
            )
            return tokenizer, lm.to(device).eval()

        tokenizer, lm = cached_model("causal-lm", spec, device, str(torch_dtype), load)
        return tokenizer, lm, device

    def _encode(self, tokenizer: Any, record: Record, limit: int) -> tuple[list[int], int, bool]:
        """(token ids, number of prompt tokens, truncated?) for one record."""
        prompt = list(tokenizer(prompt_text(record), add_special_tokens=True).input_ids)
        bos = tokenizer.bos_token_id
        if bos is not None and (not prompt or prompt[0] != bos):
            prompt.insert(0, bos)
        output = list(tokenizer(record.output, add_special_tokens=False).input_ids)
        truncated = len(prompt) + len(output) > limit
        if truncated:
            output = output[: limit - 1]
            prompt = prompt[-(limit - len(output)) :]
        return prompt + output, len(prompt), truncated

    def _score_causal_lm(self, records: Sequence[Record]) -> np.ndarray:
        import torch

        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(
                f"The 'max_length' parameter of perplexity must be an int >= 2. "
                f"Got {self.max_length!r}."
            )
        out = np.full(len(records), np.nan)
        if not records:
            return out
        tokenizer, lm, device = self._load()
        limit = self.max_length
        positions = getattr(lm.config, "max_position_embeddings", None) or getattr(
            lm.config, "n_positions", None
        )
        if isinstance(positions, int) and positions > 1:
            limit = min(limit, positions)
        encoded = [self._encode(tokenizer, r, limit) for r in records]
        self.truncated_mask_ = np.array([t for _, _, t in encoded], dtype=bool)
        self.truncated_ = int(self.truncated_mask_.sum())
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        # longest first: similar lengths share a batch, and an out-of-memory error shows at once
        order = sorted(range(len(records)), key=lambda i: -len(encoded[i][0]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = [i for i in order[start : start + self.batch_size] if encoded[i][0]]
                batch = [i for i in batch if len(encoded[i][0]) > encoded[i][1]]
                if not batch:
                    continue
                width = max(len(encoded[i][0]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    seq = encoded[i][0]
                    ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[row, : len(seq)] = 1
                logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                for row, i in enumerate(batch):
                    seq, n_prompt, _ = encoded[i]
                    # logits at position t predict token t+1: output tokens n_prompt..len-1
                    pred = logits[row, n_prompt - 1 : len(seq) - 1].float()
                    target = ids[row, n_prompt : len(seq)].to(pred.device)
                    nll = torch.nn.functional.cross_entropy(pred, target, reduction="mean")
                    out[i] = float(torch.exp(nll))
        return out


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
