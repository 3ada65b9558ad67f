"""UniEval dialogue scores: naturalness, coherence and understandability of the response.

UniEval (Zhong et al., EMNLP 2022, "Towards a Unified Multi-Dimensional
Evaluator for Text Generation") casts each quality dimension as a yes/no
question to a T5 model. The dialogue evaluator `MingZhong/unieval-dialog` was
trained on inputs laid out as `question: <question> </s> response: <response>`,
followed for coherence by ` </s> dialogue history: <history>`; the question
strings below are the ones it was trained with and must not be reworded.

The value is P(Yes) / (P(Yes) + P(No)) over the first decoder step, computed by
the yes/no scorer of `instructmining.models.seq2seq`. As in UniEval's own
dialogue evaluator, the whole response is scored at once (turn level).

Here the dialogue history is the instruction, then the input when there is
one, as two turns in UniEval's history layout (turns separated by " \\n ",
ending with a blank line). Inputs longer than `max_length` tokens are cut from
the right, as UniEval does: for coherence the end of the history goes first,
for the other two the end of the response. `truncated_` counts the records cut.

The three indicators share one checkpoint (CLI: `--model unieval=PATH`) and one
loaded model per (checkpoint, device, dtype). T5 models are known to overflow in
fp16; use bf16 (the GPU default) or fp32. Non-finite outputs raise an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from instructmining.errors import InstructMiningError
from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import register
from instructmining.models.backends import load, parse
from instructmining.models.roles import YES_NO_SCORER
from instructmining.records import Record

DEFAULT_MODEL = "MingZhong/unieval-dialog"

# The model's input format (UniEval repository, utils.add_question, task "dialogue").
QUESTIONS = {
    "naturalness": "Is this a natural response in the dialogue?",
    "coherence": "Is this a coherent response given the dialogue history?",
    "understandability": "Is this an understandable response in the dialogue?",
}


def dialogue_history(record: Record) -> str:
    """The instruction and input as UniEval dialogue turns (" \\n "-separated, blank-line end)."""
    turns = [t for t in (record.instruction, record.input) if t]
    return " \n ".join(turns) + " \n\n"


def unieval_input(dimension: str, record: Record) -> str:
    """The boolean-question text the UniEval dialogue model reads for `dimension`."""
    try:
        question = QUESTIONS[dimension]
    except KeyError:
        raise KeyError(
            f"unknown UniEval dimension {dimension!r}; choices: {', '.join(QUESTIONS)}"
        ) from None
    text = f"question: {question} </s> response: {record.output}"
    if dimension == "coherence":
        text += f" </s> dialogue history: {dialogue_history(record)}"
    return text


class UniEvalIndicator(Indicator):
    """Shared settings and scoring of the three UniEval dialogue dimensions (not registered)."""

    dimension: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ("output",)
    needs_model = True
    backends = ("unieval",)
    model_role = YES_NO_SCORER
    runtime_settings = ("device", "batch_size")

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        batch_size: int = 8,
        max_length: int = 1024,
        dtype: str = "auto",
    ) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        parse(str(model), YES_NO_SCORER, indicator=self.name)  # a wrong scheme fails here

    @property
    def backend(self) -> str:
        scheme = parse(str(self.model), YES_NO_SCORER, indicator=self.name).scheme
        return "unieval" if scheme == "hf" else scheme

    def _check_settings(self) -> None:
        for key, low in (("batch_size", 1), ("max_length", 8)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"The '{key}' parameter of {self.name} must be an int >= {low}. "
                    f"Got {value!r} instead."
                )

    def score(self, records: Sequence[Record]) -> np.ndarray:
        """P(Yes) / (P(Yes) + P(No)) per record, in batches of similar length."""
        self._check_settings()
        self.truncated_ = 0
        self.truncated_mask_ = np.zeros(len(records), dtype=bool)
        out = np.full(len(records), np.nan)
        if not records:
            return out
        scorer = load(
            YES_NO_SCORER,
            str(self.model),
            indicator=self.name,
            option="unieval",
            device=self.device,
            dtype=self.dtype,
        )
        got = scorer.score(
            [unieval_input(self.dimension, r) for r in records],
            max_length=self.max_length,
            batch_size=self.batch_size,
        )
        self.truncated_mask_ = np.asarray(got.truncated, dtype=bool)
        self.truncated_ = int(self.truncated_mask_.sum())
        out = np.asarray(got.values, dtype=np.float64)
        if not np.isfinite(out).all():  # T5 is known to overflow in fp16
            raise InstructMiningError(
                f"{self.name}: {self.model!r} gave non-finite scores in {scorer.key.dtype}; "
                "use --dtype bf16 or fp32"
            )
        return out


@register
class Naturalness(UniEvalIndicator):
    """UniEval naturalness of the response (is it a natural dialogue reply?). Higher = more natural.

    Reads output. Source: UniEval dialogue (Zhong et al., 2022), as in the paper.
    Value in [0, 1]. Cost: one T5-large encoder pass per record (GPU advised).
    """

    name = "naturalness"
    dimension = "naturalness"
    description = "UniEval dialogue naturalness of the response: P(Yes)/(P(Yes)+P(No))"
    reads = ("output",)
    direction = "higher = more natural response"


@register
class Coherence(UniEvalIndicator):
    """UniEval coherence of the response with the instruction and input. Higher = more coherent.

    Reads instruction, input, output (the prompt is the dialogue history).
    Source: UniEval dialogue (Zhong et al., 2022), as in the paper. Value in
    [0, 1]. Cost: one T5-large encoder pass per record (GPU advised).
    """

    name = "coherence"
    dimension = "coherence"
    description = (
        "UniEval dialogue coherence of the response given the instruction and input as history"
    )
    reads = ("instruction", "input", "output")
    direction = "higher = more coherent with the prompt"


@register
class Understandability(UniEvalIndicator):
    """UniEval understandability of the response. Higher = easier to understand.

    Reads output. Source: UniEval dialogue (Zhong et al., 2022), as in the paper.
    Value in [0, 1]. Cost: one T5-large encoder pass per record (GPU advised).
    """

    name = "understandability"
    dimension = "understandability"
    description = "UniEval dialogue understandability of the response: P(Yes)/(P(Yes)+P(No))"
    reads = ("output",)
    direction = "higher = more understandable response"
