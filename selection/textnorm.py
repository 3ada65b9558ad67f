"""Text normalisation, word n-grams and shingles for the contamination and duplicate checks.

Matching is about content, not typography: two texts that differ only in case,
Unicode compatibility forms (full-width letters, ligatures), punctuation or
spacing normalise to the same string. This is deliberately coarser than
`records.normalize_text`, which only fixes spacing and decides record ids.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

from instructmining.records import Record


@functools.cache
def _separators() -> re.Pattern[str]:
    """Runs of characters other than letters, digits and combining marks.

    Python's ``\\w`` leaves out combining marks (Devanagari vowel signs, for
    example), which would split words; the marks of the Basic Multilingual Plane
    are added from the Unicode database (a class limited to the BMP stays a fast
    bitmap look-up; marks beyond it are rare and split words as before).
    """
    ranges: list[tuple[int, int]] = []
    start: int | None = None
    for cp in range(0x10000):
        mark = unicodedata.category(chr(cp))[0] == "M"
        if mark and start is None:
            start = cp
        elif not mark and start is not None:
            ranges.append((start, cp - 1))
            start = None
    marks = "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    )
    return re.compile(f"(?:[^\\w{marks}]|_)+")


def normalize(text: str) -> str:
    """NFKC, case-folded, every run of punctuation, symbols and whitespace one space, trimmed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _separators().sub(" ", folded).strip()


def words(text: str) -> list[str]:
    """The words of the normalised text."""
    return normalize(text).split()


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """The distinct word n-grams of `tokens`, as tuples of words."""
    return set(zip(*(tokens[i:] for i in range(n)), strict=False))


def shingles(tokens: list[str], n: int) -> set[str]:
    """Word n-gram shingles for set similarity; a text shorter than n words is one shingle."""
    if not tokens:
        return set()
    if len(tokens) < n:
        return {" ".join(tokens)}
    return {" ".join(gram) for gram in ngrams(tokens, n)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / |a ∪ b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


FIELDS = ("prompt", "full")


def field_text(record: Record, field: str) -> str:
    """The text compared for a field: "prompt" (instruction + input) or "full" (+ output)."""
    if field == "prompt":
        return record.prompt
    if field == "full":
        return "\n\n".join(t for t in (record.prompt, record.output) if t)
    raise ValueError(f"unknown field {field!r}; choose from {', '.join(FIELDS)}")


def field_texts(records: Iterable[Record], field: str) -> list[str]:
    """`field_text` of every record."""
    return [field_text(r, field) for r in records]
