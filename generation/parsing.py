"""Turn model completions into instructions and (input, output) instances."""

from __future__ import annotations

import re

# an item boundary: a newline, the item number, a dot and a space ("\n10. ")
_ITEM = re.compile(r"\n\d+\s?\. ")
_SPACE = re.compile(r"\s+")
# chat models often restate the number the prompt ended with ("9. ...")
_LEADING_NUMBER = re.compile(r"^\d+\s?\.\s+")
_EXAMPLE = re.compile(r"Example\s?\d*\.?")
_OUTPUT = re.compile(r"Output\s*\d*\s*:")
_INPUT = re.compile(r"Input\s*\d*\s*:")
_LEADING_INPUT = re.compile(r"^Input\s*\d*\s*:")


def parse_instruction_list(text: str) -> list[str]:
    """The instructions of a numbered-list continuation (the first item is the prompt's last number).

    Whitespace is collapsed and the first letter upper-cased. (Self-Instruct's code
    calls str.capitalize, which also lower-cases the rest; we keep the rest as written
    because names and code identifiers depend on case. ROUGE-L ignores case anyway.)
    """
    out = []
    for raw in _ITEM.split(text):
        item = _LEADING_NUMBER.sub("", _SPACE.sub(" ", raw).strip())
        if item:
            out.append(item[0].upper() + item[1:])
    return out


def _input_output(text: str) -> tuple[str, str]:
    """Split one example's text into (input, output) at its "Output:" marker."""
    parts = _OUTPUT.split(text)
    if len(parts) > 1:
        inp, out = parts[0].strip(), parts[1].strip()
    else:
        inp, out = "", text.strip()
    # a model that runs on writes the next pair into the output; keep only the first
    out = _INPUT.split(out)[0].strip()
    inp = _LEADING_INPUT.sub("", inp).strip()
    return inp, out


def parse_input_first(text: str) -> list[tuple[str, str]]:
    """Instances of an ordinary task: "Example N / Input: ... / Output: ..." blocks, or one pair."""
    text = text.strip()
    if _EXAMPLE.search(text):
        blocks = [b.strip() for b in _EXAMPLE.split(text)]
        return [_input_output(b) for b in blocks if b]
    if _OUTPUT.search(text):
        return [_input_output(text)]
    return []


def parse_output_first(text: str) -> list[tuple[str, str]]:
    """Instances of a classification task: "Class label: L" lines, each followed by its input."""
    if "Class label:" not in text:
        return []
    out = []
    for block in text.split("Class label:")[1:]:
        label, _, rest = block.strip().partition("\n")
        inp = _LEADING_INPUT.sub("", rest.strip()).strip()
        out.append((inp, label.strip()))
    return out


def parse_instances(text: str, *, classification: bool) -> list[tuple[str, str]]:
    """(input, output) pairs from an instance-generation completion."""
    return parse_output_first(text) if classification else parse_input_first(text)
