"""Length indicators: whitespace-separated words of the prompt and of the response."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import register
from instructmining.records import Record


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


@register
class InputLength(Indicator):
    """Words of instruction + input (whitespace split). Higher = longer prompt.

    Source: the paper's "input length" (Table 1). Cost: negligible.
    """

    name = "input_length"
    description = "words of the instruction plus input (whitespace split)"
    reads = ("instruction", "input")
    direction = "higher = longer prompt"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.fromiter(
            (word_count(r.instruction) + word_count(r.input) for r in records),
            dtype=np.float64,
            count=len(records),
        )


@register
class OutputLength(Indicator):
    """Words of the output (whitespace split). Higher = longer response.

    Source: the paper's "output length" (Table 1; in rule v1). Cost: negligible.
    """

    name = "output_length"
    description = "words of the output (whitespace split)"
    reads = ("output",)
    direction = "higher = longer response"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        return np.fromiter(
            (word_count(r.output) for r in records), dtype=np.float64, count=len(records)
        )
