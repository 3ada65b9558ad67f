"""UniEval dialogue scores: naturalness, coherence and understandability of the response.

UniEval (Zhong et al., EMNLP 2022, "Towards a Unified Multi-Dimensional
Evaluator for Text Generation") casts each quality dimension as a yes/no
question to a T5 model. The dialogue evaluator `MingZhong/unieval-dialog` was
trained on inputs laid out as `question: <question> </s> response: <response>`,
followed for coherence by ` </s> dialogue history: <history>`; the question
strings below are the ones it was trained with and must not be reworded.

The value is P(Yes) / (P(Yes) + P(No)) over the first decoder step (the decoder
fed only its start token), where "Yes" and "No" are the first tokens the
tokenizer gives for those words; computed as sigmoid(logit_Yes - logit_No),
which equals the ratio of the two softmax probabilities. As in UniEval's own
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
from typing import Any, ClassVar

import numpy as np

from instructmining.errors import InstructMiningError
from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import register
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


def load_unieval(
    spec: str, device: str, dtype: str, *, indicator: str
) -> tuple[Any, Any, int, int]:
    """(tokenizer, T5 model, Yes id, No id) for a UniEval checkpoint, loaded once per process."""
    from instructmining.models.hf import dtype_kwarg, quiet_transformers
    from instructmining.models.loading import (
        cached_model,
        load_target,
    )

    spec, device, torch_dtype = load_target(
        spec, indicator=indicator, device=device, dtype=dtype, option="unieval"
    )

    def load() -> tuple[Any, Any, int, int]:
        try:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - part of the models extra
            raise ImportError(
                f"the {indicator} indicator needs transformers: pip install 'instructmining[models]'"
            ) from exc
        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForSeq2SeqLM.from_pretrained(spec, **{dtype_kwarg(): torch_dtype})
        yes = tokenizer("Yes").input_ids[0]
        no = tokenizer("No").input_ids[0]
        if yes == no:
            raise ValueError(f"{spec!r}: the tokenizer gives one token for 'Yes' and 'No'")
        return tokenizer, model.to(device).eval(), yes, no

    with quiet_transformers():
        return cached_model("unieval", spec, device, str(torch_dtype), load)


class UniEvalIndicator(Indicator):
    """Shared settings and scoring of the three UniEval dialogue dimensions (not registered)."""

    dimension: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ("output",)
    needs_model = True
    backends = ("unieval",)
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

    @property
    def backend(self) -> str:
        return "unieval"

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
        import torch

        from instructmining.models.hf import quiet_transformers

        tokenizer, model, yes, no = load_unieval(
            str(self.model), self.device, self.dtype, indicator=self.name
        )
        texts = [unieval_input(self.dimension, r) for r in records]
        with quiet_transformers():
            full = tokenizer(texts).input_ids
        lengths = np.array([len(ids) for ids in full])
        self.truncated_mask_ = lengths > self.max_length
        self.truncated_ = int(self.truncated_mask_.sum())
        start_id = model.config.decoder_start_token_id
        if start_id is None:
            start_id = model.config.pad_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode():
            for begin in range(0, len(order), self.batch_size):
                idx = order[begin : begin + self.batch_size]
                # the tokenizer's right-side truncation keeps its end token
                with quiet_transformers():
                    enc = tokenizer(
                        [texts[i] for i in idx],
                        max_length=self.max_length,
                        truncation=True,
                        padding=True,
                        return_tensors="pt",
                    )
                if enc.input_ids.shape[1] == 0:  # pragma: no cover - a tokenizer adding nothing
                    enc["input_ids"] = torch.full((len(idx), 1), pad_id)
                    enc["attention_mask"] = torch.ones((len(idx), 1), dtype=torch.long)
                decoder = torch.full((len(idx), 1), start_id, dtype=torch.long)
                logits = model(
                    input_ids=enc.input_ids.to(model.device),
                    attention_mask=enc.attention_mask.to(model.device),
                    decoder_input_ids=decoder.to(model.device),
                ).logits[:, 0, :]
                margin = logits[:, yes].float() - logits[:, no].float()
                out[idx] = torch.sigmoid(margin).cpu().numpy()
        if not np.isfinite(out).all():  # T5 is known to overflow in fp16
            raise InstructMiningError(
                f"{self.name}: {self.model!r} gave non-finite scores in {model.dtype}; "
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
