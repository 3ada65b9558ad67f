"""The record: one (instruction, input, output) example plus every field it came with."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def content_id(instruction: str, input: str, output: str) -> str:
    """A stable id from the normalised content: equal texts up to spacing share it.

    16 hex digits of SHA-256 (64 bits): collisions are negligible below ~10^8 records.
    """
    payload = json.dumps(
        [normalize_text(instruction), normalize_text(input), normalize_text(output)],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Record:
    """An instruction-tuning example.

    `fields` is the source row exactly as read (all of its fields, untouched), so
    that a subset can be written back in the format it came in.
    """

    instruction: str
    input: str
    output: str
    id: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", content_id(self.instruction, self.input, self.output))

    @property
    def prompt(self) -> str:
        """Instruction and input joined by a blank line (input omitted when empty)."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction

    def to_dict(self) -> dict[str, Any]:
        """The canonical fields, for writing a normalised file."""
        return {
            "id": self.id,
            "instruction": self.instruction,
            "input": self.input,
            "output": self.output,
        }


def make_record(
    instruction: str, input: str = "", output: str = "", *, id: str | None = None, **fields: Any
) -> Record:
    """Build a record from keyword fields (tests, the Python API)."""
    row = {"instruction": instruction, "input": input, "output": output, **fields}
    if id is not None:
        row["id"] = id
    return Record(instruction, input, output, id or "", row)
