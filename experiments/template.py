"""The prompt templates used for finetuning and for the evaluation loss (one for both).

- "alpaca": the instruction, the input when there is one, then a response
  header (for base models without a chat template, such as the tiny base);
- "chat": the tokenizer's own chat template, one user turn holding the
  instruction and input, then the assistant header (for instruction-tuned
  models such as SmolLM2-135M-Instruct).
Either way the model learns (and is scored on) only the response tokens that
follow, ending with the tokenizer's end-of-sequence token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from instructmining.records import Record

TEMPLATE_NAME = "alpaca-v1"
TEMPLATES = ("alpaca", "chat")
_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
IGNORE = -100  # label value the loss skips (prompt and padding positions)


def format_prompt(record: Record, template: str = "alpaca", tokenizer: Any = None) -> str:
    """The prompt text of `record`: everything the model sees before its response."""
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("the chat template needs a tokenizer that has a chat_template")
        text: str = tokenizer.apply_chat_template(
            [{"role": "user", "content": record.prompt}],
            tokenize=False,
            add_generation_prompt=True,
        )
        return text
    if template != "alpaca":
        raise ValueError(f"template must be one of {', '.join(TEMPLATES)}; got {template!r}")
    if record.input.strip():
        return _WITH_INPUT.format(instruction=record.instruction, input=record.input)
    return _NO_INPUT.format(instruction=record.instruction)


def encode_example(
    tokenizer: Any, record: Record, max_length: int, template: str = "alpaca"
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one record; labels are IGNORE on prompt tokens."""
    return encode_all(tokenizer, [record], max_length, template)[0]


def encode_all(
    tokenizer: Any, records: Sequence[Record], max_length: int, template: str = "alpaca"
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record; labels are IGNORE on prompt tokens.

    Prompt and response are tokenized separately so the boundary is exact, and
    the response ends with the tokenizer's EOS token. When the pair is longer
    than `max_length`, the prompt keeps at most half of it (its end, next to the
    response) and the response is cut at its end; the response keeps at least
    one token.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if not records:
        return []
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set one before finetuning")
    prompts = tokenizer(
        [format_prompt(r, template, tokenizer) for r in records], add_special_tokens=False
    )["input_ids"]
    outputs = tokenizer([r.output for r in records], add_special_tokens=False)["input_ids"]
    return [_join(list(p), [*o, eos], max_length) for p, o in zip(prompts, outputs, strict=True)]


def _join(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    if len(prompt) + len(response) > max_length:
        keep = min(len(prompt), max(max_length - len(response), max_length // 2))
        prompt = prompt[len(prompt) - keep :]
        response = response[: max_length - len(prompt)]
    return prompt + response, [IGNORE] * len(prompt) + response
