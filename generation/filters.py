"""Self-Instruct's filters, with the published settings as defaults.

Instruction filters (Wang et al., 2023, and their code): 4-150 words; none of the
words a text-only model cannot act on; not starting with "Write a program", with
punctuation or with a non-ASCII character; ROUGE-L F1 <= 0.7 against every kept
instruction (applied by the generator with `RougeLIndex`). Instance filters: input
equal to output, an empty output, or an input/output ending with ":" drop the
instance; a task whose same non-empty input has different outputs is dropped whole;
exact duplicates are removed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

# Self-Instruct's blocklist; Alpaca added the five in ALPACA_EXTRA_BLOCKLIST
DEFAULT_BLOCKLIST: tuple[str, ...] = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
)
ALPACA_EXTRA_BLOCKLIST: tuple[str, ...] = ("video", "audio", "music", "flowchart", "diagram")
DEFAULT_BANNED_PREFIXES: tuple[str, ...] = ("Write a program",)

# drop reasons, in the order the instruction checks run
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
BLOCKLIST = "blocklisted_word"
BANNED_PREFIX = "banned_prefix"
PUNCTUATION = "starts_with_punctuation"
NON_ASCII = "starts_with_non_ascii"
DUPLICATE = "duplicate_instruction"
SIMILAR = "rouge_similar"


@dataclass(frozen=True)
class InstructionFilter:
    """The per-instruction checks that need no other instruction; `check` names the failing one."""

    min_words: int = 4
    max_words: int = 150
    blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST
    banned_prefixes: tuple[str, ...] = DEFAULT_BANNED_PREFIXES

    def __post_init__(self) -> None:
        if self.min_words < 0 or self.max_words < self.min_words:
            raise ValueError(
                f"word limits must satisfy 0 <= min_words <= max_words; got {self.min_words}, {self.max_words}"
            )
        words = "|".join(re.escape(w) for w in self.blocklist if w)
        pattern = re.compile(rf"\b(?:{words})\b", re.IGNORECASE) if words else None
        object.__setattr__(self, "_blocked", pattern)

    def check(self, instruction: str) -> str | None:
        """The reason `instruction` is dropped, or None when it passes."""
        n = len(instruction.split())
        if n == 0 or n < self.min_words:
            return TOO_SHORT
        if n > self.max_words:
            return TOO_LONG
        blocked: re.Pattern[str] | None = getattr(self, "_blocked", None)
        if blocked is not None and blocked.search(instruction):
            return BLOCKLIST
        if instruction.startswith(self.banned_prefixes):
            return BANNED_PREFIX
        if instruction[0] in string.punctuation:
            return PUNCTUATION
        if not instruction[0].isascii():
            return NON_ASCII
        return None


# instance drop reasons
SAME_INPUT_OUTPUT = "input_equals_output"
EMPTY_OUTPUT = "empty_output"
ENDS_WITH_COLON = "ends_with_colon"
DUPLICATE_INSTANCE = "duplicate_instance"
CONFLICTING = "conflicting_outputs"
OVER_LIMIT = "over_max_instances"


def clean_instances(
    instances: Sequence[tuple[str, str]], *, max_instances: int = 5
) -> tuple[list[tuple[str, str]], Counter[str]]:
    """Apply the instance filters; returns the kept pairs and the drops counted by reason.

    A task whose same non-empty input has different outputs loses every instance
    (counted once under "conflicting_outputs" per instance).
    """
    dropped: Counter[str] = Counter()
    valid = []
    for inp, out in instances:
        inp, out = inp.strip(), out.strip()
        if inp == out:
            dropped[SAME_INPUT_OUTPUT] += 1
        elif out == "":
            dropped[EMPTY_OUTPUT] += 1
        elif inp.endswith(":") or out.endswith(":"):
            dropped[ENDS_WITH_COLON] += 1
        else:
            valid.append((inp, out))
    outputs: dict[str, str] = {}
    for inp, out in valid:
        if inp and outputs.setdefault(inp, out) != out:
            dropped[CONFLICTING] += len(valid)
            return [], dropped
    kept: list[tuple[str, str]] = []
    for pair in valid:
        if pair in kept:
            dropped[DUPLICATE_INSTANCE] += 1
        else:
            kept.append(pair)
    if len(kept) > max_instances:
        dropped[OVER_LIMIT] += len(kept) - max_instances
        kept = kept[:max_instances]
    return kept, dropped
