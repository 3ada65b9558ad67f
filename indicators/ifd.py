"""IFD: instruction-following difficulty of a response under a causal LM.

IFD = perplexity of the output given its prompt / perplexity of the output
alone (Li et al., "From Quantity to Quality", the Cherry LLM paper). A value
near or above 1 means the prompt does not help the model predict the response
(a weak or mismatched pair); a low value means the response follows largely
from the instruction. Superfiltering (Li et al., 2024) shows that a small
model's IFD ranks data much like a large one's, which is why the `local`
profile computes it with SmolLM2-135M. Both perplexities score exactly the same
output tokens (`instructmining.models.causal`); the conditional pass is shared
with the `perplexity` indicator when both use the same model and settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import register
from instructmining.models.backends import NGRAM, ModelSpecError, parse
from instructmining.models.roles import TOKEN_SCORER
from instructmining.records import Record


@register
class IFD(Indicator):
    """Perplexity of the output given the prompt divided by its perplexity alone.

    Source: Cherry LLM (Li et al., 2023); Superfiltering (Li et al., 2024) for
    small scoring models. Higher = the prompt helps less. NaN for an empty output.
    Cost: two causal-LM passes per record (one when `perplexity` shares the model).
    """

    name = "ifd"
    description = "perplexity of the output given the prompt / perplexity of the output alone"
    reads = ("instruction", "input", "output")
    direction = "higher = the instruction helps less to predict the response"
    needs_model = True
    backends = ("causal-lm",)
    #: no model-free fallback: `profiles.build` refuses it without a model, before any work
    requires_model = True
    model_role = TOKEN_SCORER
    runtime_settings = ("device", "token_budget")

    def __init__(
        self,
        *,
        model: str | None = None,
        device: str = "auto",
        max_length: int = 1024,
        dtype: str = "auto",
        template: str = "auto",
        token_budget: int = 8192,
    ) -> None:
        self.model = model
        self.device = device
        self.max_length = max_length
        self.dtype = dtype
        self.template = template
        self.token_budget = token_budget
        self._scheme()  # a wrong scheme fails here

    def _scheme(self) -> str:
        if not self.model:
            return "hf"  # no model yet: `score` says to set one
        scheme = parse(self.model, TOKEN_SCORER, indicator=self.name).scheme
        if scheme == NGRAM:
            raise ModelSpecError(
                f"ifd: model {NGRAM!r} is not a causal LM; ifd takes hf:NAME_OR_PATH, "
                "gguf:PATH or a bare NAME_OR_PATH"
            )
        return scheme

    @property
    def backend(self) -> str:
        scheme = self._scheme()
        return "causal-lm" if scheme in ("hf", "gguf") else scheme

    def scorer(self) -> Any:
        """The shared causal-LM token scorer (the same one `perplexity` uses)."""
        from instructmining.models.causal import scorer_for

        if not self.model:
            raise ValueError("ifd needs a causal LM: set its model (e.g. smollm2-135m-instruct)")
        return scorer_for(self)

    def score(self, records: Sequence[Record]) -> np.ndarray:
        if self.model and not records:  # nothing to load
            self.truncated_, self.truncated_mask_ = 0, np.zeros(0, dtype=bool)
            return np.empty(0)
        scorer = self.scorer()
        given = scorer.score(records, conditional=True)
        alone = scorer.score(records, conditional=False, progress=self.progress_)
        self.truncated_mask_ = given.truncated | alone.truncated
        self.truncated_ = int(self.truncated_mask_.sum())
        return np.exp(given.mean_nll - alone.mean_nll)
