"""Reward-model score of the response to the prompt.

A reward model (RM) is a sequence classifier with one output trained on human
preference pairs: a higher value means the RM prefers the response. The paper's
checkpoint is `OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5`; any
one-output `AutoModelForSequenceClassification` checkpoint works by id or path.
The value is the pair scorer's output for (prompt = `Record.prompt`, response =
the output): the model, its input format (`template`: auto, oasst, chat, pair)
and the truncation at `max_length` live in `instructmining.models.reward`.
`truncated_` counts the records cut, `truncated_mask_` marks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from instructmining.errors import InstructMiningError
from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import register
from instructmining.models.backends import load, parse
from instructmining.models.reward import TEMPLATES
from instructmining.models.roles import PAIR_SCORER
from instructmining.records import Record

DEFAULT_MODEL = "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"
__all__ = ["DEFAULT_MODEL", "TEMPLATES", "Reward"]


@register
class Reward(Indicator):
    """Reward-model score of the output given the prompt. Higher = response preferred by the RM.

    Reads instruction, input, output. Source: the paper's reward score
    (OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5). Input format and
    truncation: module docstring. Cost: one forward pass of a 1.4B model per
    record (a GPU is advised).
    """

    name = "reward"
    description = "reward-model score of the response to the prompt"
    reads = ("instruction", "input", "output")
    direction = "higher = response preferred by the reward model"
    needs_model = True
    backends = ("transformers",)
    model_role = PAIR_SCORER
    runtime_settings = ("device", "batch_size")

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        batch_size: int = 8,
        max_length: int = 1024,
        dtype: str = "auto",
        template: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.template = template
        self.trust_remote_code = trust_remote_code
        parse(str(model), PAIR_SCORER, indicator=self.name)  # a wrong scheme fails here

    @property
    def backend(self) -> str:
        scheme = parse(str(self.model), PAIR_SCORER, indicator=self.name).scheme
        return "transformers" if scheme == "hf" else scheme

    def _check_settings(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(
                f"The 'template' parameter of reward must be one of {', '.join(TEMPLATES)}. "
                f"Got {self.template!r} instead."
            )
        for key, low in (("batch_size", 1), ("max_length", 8)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"The '{key}' parameter of reward must be an int >= {low}. Got {value!r} instead."
                )

    def score(self, records: Sequence[Record]) -> np.ndarray:
        """One reward per record (the pair scorer batches them by length)."""
        self._check_settings()
        self.truncated_ = 0
        self.truncated_mask_ = np.zeros(len(records), dtype=bool)
        if not records:
            return np.full(0, np.nan)
        # remote code loads another model object: a load option, only when code asked for it
        remote: dict[str, Any] = {"trust_remote_code": True} if self.trust_remote_code else {}
        scorer = load(
            PAIR_SCORER,
            str(self.model),
            indicator=self.name,
            device=self.device,
            dtype=self.dtype,
            **remote,
        )
        got = scorer.score(
            [r.prompt for r in records],
            [r.output for r in records],
            template=self.template,
            max_length=self.max_length,
            batch_size=self.batch_size,
        )
        self.template_ = got.template
        self.truncated_mask_ = np.asarray(got.truncated, dtype=bool)
        self.truncated_ = int(self.truncated_mask_.sum())
        values = np.asarray(got.values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise InstructMiningError(
                f"reward: {self.model!r} gave non-finite scores in {scorer.key.dtype}; "
                "use --dtype fp32 (or bf16 on a GPU)"
            )
        return values
