"""The model roles, as types: what each takes and gives, not how it is loaded.

Indicators ask `models.backends.load(role, spec, ...)` for one of these and
compute their values from its outputs. Every role object carries its identity,
`key` (a `LoadKey`): two requests with equal keys get the same object, loaded
once per process.

- `Embedder`: texts -> L2-normalised float32 vectors (knn6).
- `TokenScorer`: records -> summed NLL of each output's tokens, given its prompt
  or alone (perplexity, ifd); bound to its layout settings, memoised.
- `PairScorer`: (prompt, response) -> one float (reward models).
- `YesNoScorer`: text -> P(Yes) / (P(Yes) + P(No)) at the first decoder step of
  a seq2seq model (UniEval).
- `CausalLM`: a loaded causal LM and its tokenizer (token scoring, generation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from instructmining.records import Record

EMBEDDER = "embedder"
TOKEN_SCORER = "token-scorer"
PAIR_SCORER = "pair-scorer"
YES_NO_SCORER = "yes-no-scorer"
CAUSAL_LM = "causal-lm"
#: role -> the words errors use for it
ROLES = {
    EMBEDDER: "an embedder",
    TOKEN_SCORER: "a token scorer",
    PAIR_SCORER: "a pair scorer",
    YES_NO_SCORER: "a yes/no scorer",
    CAUSAL_LM: "a causal LM",
}

Progress = Callable[[int], None]


@dataclass(frozen=True)
class LoadKey:
    """Identity of a loaded model or role object: equal keys share one object per process.

    `source` is what the scheme resolved the user's string to (a local folder or
    file, or a hub id); `dtype` a name ("fp32", "bf16", "fp16"); `device` a
    resolved device ("cpu", "cuda:0"); `options` the settings fixed at load time.
    """

    role: str
    scheme: str
    source: str
    dtype: str
    device: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Scored:
    """Per-record summed NLL, scored token counts and truncation flags."""

    nll_sum: np.ndarray  # float64, NaN where nothing was scored
    tokens: np.ndarray  # int64
    truncated: np.ndarray  # bool

    @property
    def mean_nll(self) -> np.ndarray:
        """Mean NLL per scored token (NaN for an empty response)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.tokens > 0, self.nll_sum / np.maximum(self.tokens, 1), np.nan)


@dataclass(frozen=True)
class PairScores:
    """One float64 per (prompt, response), which inputs were cut, the input format used."""

    values: np.ndarray
    truncated: np.ndarray
    template: str


@dataclass(frozen=True)
class YesNoScores:
    """P(Yes) / (P(Yes) + P(No)) per text (float64) and which texts were cut."""

    values: np.ndarray
    truncated: np.ndarray


@dataclass(frozen=True)
class CausalLM:
    """A causal LM in eval mode on `device`, with its tokenizer."""

    tokenizer: Any
    model: Any
    device: str
    key: LoadKey


@runtime_checkable
class Embedder(Protocol):
    """Texts -> unit vectors."""

    key: LoadKey

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """(len(texts), dim) float32 rows of L2 norm 1, in input order."""
        ...

    def truncated(self, texts: Sequence[str], *, max_length: int | None = None) -> np.ndarray:
        """Which texts are longer than the token limit `embed` applies (bool per text)."""
        ...


@runtime_checkable
class TokenScorer(Protocol):
    """Summed negative log-likelihood of each record's output tokens."""

    key: LoadKey

    def score(
        self,
        records: Sequence[Record],
        *,
        conditional: bool = True,
        progress: Progress | None = None,
    ) -> Scored:
        """Given the record's prompt (`conditional`) or after only a start token."""
        ...


@runtime_checkable
class PairScorer(Protocol):
    """(prompt, response) -> one float; higher = the model prefers the response."""

    key: LoadKey

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        template: str = "auto",
        max_length: int = 1024,
        batch_size: int = 8,
    ) -> PairScores:
        """One value per pair; `template` is the input format ("auto" lets the model decide)."""
        ...


@runtime_checkable
class YesNoScorer(Protocol):
    """Text -> probability that the answer is "Yes" rather than "No"."""

    key: LoadKey

    def score(
        self, texts: Sequence[str], *, max_length: int = 1024, batch_size: int = 8
    ) -> YesNoScores:
        """P(Yes) / (P(Yes) + P(No)) per text, inputs cut from the right at `max_length`."""
        ...


#: role -> the type a factory must return for it
ROLE_TYPES: dict[str, type] = {
    EMBEDDER: Embedder,
    TOKEN_SCORER: TokenScorer,
    PAIR_SCORER: PairScorer,
    YES_NO_SCORER: YesNoScorer,
    CAUSAL_LM: CausalLM,
}
