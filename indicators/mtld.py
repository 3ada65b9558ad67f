"""MTLD: lexical diversity of the response (McCarthy & Jarvis 2010) via lexicalrichness."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import register
from instructmining.records import Record


@register
class MTLD(Indicator):
    """Measure of textual lexical diversity of the output. Higher = more varied vocabulary.

    Source: the paper's MTLD indicator, computed with `lexicalrichness`
    (`LexicalRichness(output).mtld(threshold)`, its tokenizer: lower case,
    punctuation removed; the mean of the forward and backward passes). Texts too
    short to complete one factor: lexicalrichness's own rule applies (a text
    whose words are all distinct scores its word count; otherwise the partial
    factor of the whole text). A text with no words scores 0.0 (no diversity;
    lexicalrichness itself divides by zero there). Cost: ~0.1 s per 1,000 texts.
    """

    name = "mtld"
    description = "MTLD lexical diversity of the output (lexicalrichness, threshold 0.72)"
    reads = ("output",)
    direction = "higher = more diverse vocabulary"
    backends = ("lexicalrichness",)

    def __init__(self, *, threshold: float = 0.72) -> None:
        self.threshold = threshold

    @property
    def backend(self) -> str:
        return "lexicalrichness"

    def score(self, records: Sequence[Record]) -> np.ndarray:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(
                f"The 'threshold' parameter of mtld must be in (0, 1). Got {self.threshold!r}."
            )
        try:
            from lexicalrichness import LexicalRichness
        except ImportError as exc:  # pragma: no cover - part of the offline extra
            raise ImportError(
                "mtld needs lexicalrichness: pip install 'instructmining[offline]'"
            ) from exc
        out = np.empty(len(records), dtype=np.float64)
        for i, record in enumerate(records):
            lex = LexicalRichness(record.output)
            out[i] = lex.mtld(threshold=self.threshold) if lex.words else 0.0
        return out
