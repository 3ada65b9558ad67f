"""Recognise the published instruction-data schemas and turn a row into a Record.

Recognised without flags (first match wins):

- chat ``messages``: a list of ``{"role", "content"}``;
- ShareGPT ``conversations``: a list of ``{"from", "value"}``;
- HH-RLHF: ``chosen``/``rejected`` transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``;
  the ``chosen`` side is read (``--map transcript=rejected`` reads the other);
- Alpaca: ``instruction, input, output`` (``input`` optional);
- Dolly: ``instruction, context, response``;
- prompt/completion pairs.

A conversation becomes ONE record: the last assistant turn is the ``output``,
the user turn just before it the ``instruction``, and every earlier turn
(system prompt included) the ``input``; consecutive turns of one role are merged
first, as a transcript of ``"User: ..."``,
``"Assistant: ..."`` and ``"System: ..."`` paragraphs. Turns after the last
assistant turn are not scored; the row's original fields stay in
``Record.fields``. Anything else is mapped with ``--map``, e.g.
``--map instruction=question,output=answer``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from instructmining.records import Record

CANONICAL = ("instruction", "input", "output", "id")
CONVERSATION_KEYS = ("messages", "conversations", "transcript")
MAP_TARGETS = CANONICAL + CONVERSATION_KEYS


class RowError(ValueError):
    """A row that does not fit the schema; the reader adds the file and line."""


class MissingFieldError(RowError):
    """A required field is absent from a row."""


@dataclass(frozen=True)
class Schema:
    """A recognised layout: its name, the source field of each role, and a converter."""

    name: str
    fields: Mapping[str, str]
    convert: Callable[[Mapping[str, Any]], Record]


def parse_field_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """Parse ``instruction=question,output=answer`` into {target: source}."""
    if spec is None:
        return {}
    items = spec.items() if isinstance(spec, Mapping) else _split_spec(spec)
    out: dict[str, str] = {}
    for target, source in items:
        target, source = target.strip(), source.strip()
        if target not in MAP_TARGETS:
            raise ValueError(
                f"--map: unknown target field {target!r}; choose from {', '.join(MAP_TARGETS)} "
                "(e.g. --map instruction=question,output=answer)."
            )
        if not source:
            raise ValueError(f"--map: no source field given for {target!r}.")
        out[target] = source
    return out


def _split_spec(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise ValueError(
                f"--map: {part!r} is not of the form target=source "
                "(e.g. --map instruction=question,output=answer)."
            )
        target, source = part.split("=", 1)
        pairs.append((target, source))
    return pairs


def _text(row: Mapping[str, Any], key: str, *, required: bool) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise MissingFieldError(key)
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"field {key!r} must be text, got {type(value).__name__}")


def _row_id(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    return "" if value is None or value == "" else str(value)


def _flat(instr: str, inp: str | None, out: str, id_key: str, name: str) -> Schema:
    def convert(row: Mapping[str, Any]) -> Record:
        return Record(
            instruction=_text(row, instr, required=True),
            input=_text(row, inp, required=False) if inp else "",
            output=_text(row, out, required=True),
            id=_row_id(row, id_key),
            fields=row,
        )

    roles = {"instruction": instr, "output": out}
    if inp:
        roles["input"] = inp
    return Schema(name, roles, convert)


# --- conversations ------------------------------------------------------------------

_ROLE_NAMES = {
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}
_LABEL = {"user": "User", "assistant": "Assistant", "system": "System"}


def turns_to_record(turns: list[tuple[str, str]], row: Mapping[str, Any], id_key: str) -> Record:
    """Fold (role, text) turns into one record (see the module docstring)."""
    turns = _merge_runs(turns)
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=-1)
    if last < 0:
        raise RowError("the conversation has no assistant turn to use as the output")
    if last == 0 or turns[last - 1][0] != "user":
        raise RowError("the last assistant turn is not preceded by a user turn")
    history = turns[: last - 1]
    return Record(
        instruction=turns[last - 1][1],
        input="\n\n".join(f"{_LABEL[role]}: {text}" for role, text in history),
        output=turns[last][1],
        id=_row_id(row, id_key),
        fields=row,
    )


def _merge_runs(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # Consecutive turns of one role (seen in HH-RLHF transcripts whose inline "Human:" lacks
    # the blank line before it) are one turn: their texts are joined by a blank line.
    merged: list[tuple[str, str]] = []
    for role, text in turns:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, f"{merged[-1][1]}\n\n{text}")
        else:
            merged.append((role, text))
    return merged


def _chat_turns(value: Any, role_key: str, text_key: str, field: str) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise RowError(f"field {field!r} must be a list of turns, got {type(value).__name__}")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, Mapping) or role_key not in turn or text_key not in turn:
            raise RowError(f"{field}[{i}] must be an object with {role_key!r} and {text_key!r}")
        role = _ROLE_NAMES.get(str(turn[role_key]).lower())
        if role is None:
            raise RowError(
                f"{field}[{i}]: unknown role {turn[role_key]!r} "
                f"(known: {', '.join(sorted(_ROLE_NAMES))})"
            )
        turns.append((role, "" if turn[text_key] is None else str(turn[text_key])))
    return turns


def _messages_schema(key: str, id_key: str) -> Schema:
    def convert(row: Mapping[str, Any]) -> Record:
        if key not in row:
            raise MissingFieldError(key)
        return turns_to_record(_chat_turns(row[key], "role", "content", key), row, id_key)

    return Schema("messages", {"messages": key}, convert)


def _sharegpt_schema(key: str, id_key: str) -> Schema:
    def convert(row: Mapping[str, Any]) -> Record:
        if key not in row:
            raise MissingFieldError(key)
        return turns_to_record(_chat_turns(row[key], "from", "value", key), row, id_key)

    return Schema("sharegpt", {"conversations": key}, convert)


_HH_SPLIT = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def parse_hh_transcript(text: str) -> list[tuple[str, str]]:
    """Split an HH-RLHF transcript into (role, text) turns."""
    parts = _HH_SPLIT.split(text)
    if parts[0].strip():
        raise RowError("the transcript does not start with '\\n\\nHuman:'")
    return [
        ("user" if role == "Human" else "assistant", body.strip())
        for role, body in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _hh_schema(key: str, id_key: str) -> Schema:
    def convert(row: Mapping[str, Any]) -> Record:
        return turns_to_record(parse_hh_transcript(_text(row, key, required=True)), row, id_key)

    return Schema("hh-rlhf", {"transcript": key}, convert)


def detect_schema(
    keys: list[str] | set[str],
    sample: Mapping[str, Any] | None = None,
    field_map: Mapping[str, str] | None = None,
) -> Schema:
    """Choose the schema for rows with these keys; `field_map` overrides detection.

    Raises MissingFieldError listing the fields found when nothing fits.
    """
    fmap = dict(field_map or {})
    keys = set(keys)
    id_key = fmap.get("id", "id")
    if "messages" in fmap:
        return _messages_schema(fmap["messages"], id_key)
    if "conversations" in fmap:
        return _sharegpt_schema(fmap["conversations"], id_key)
    if "transcript" in fmap:
        return _hh_schema(fmap["transcript"], id_key)
    if not fmap.keys() & {"instruction", "input", "output"}:
        if "messages" in keys:
            return _messages_schema("messages", id_key)
        if "conversations" in keys and (
            sample is None or isinstance(sample.get("conversations"), list)
        ):
            return _sharegpt_schema("conversations", id_key)
        if "chosen" in keys and (
            sample is None or str(sample.get("chosen", "")).startswith("\n\nHuman:")
        ):
            return _hh_schema("chosen", id_key)
    instr = fmap.get("instruction") or _first(keys, ("instruction", "prompt"))
    out = fmap.get("output") or _first(keys, ("output", "response", "completion"))
    inp = fmap.get("input") or _first(keys, ("input", "context"))
    if instr is None or out is None:
        missing = [role for role, src in (("instruction", instr), ("output", out)) if src is None]
        raise MissingFieldError(
            f"no field for {' and '.join(missing)}; fields found: "
            f"{', '.join(sorted(keys)) or '(none)'}. Name them with --map, e.g. "
            f"--map instruction={_guess(keys, 0)},output={_guess(keys, 1)}"
        )
    name = {
        ("instruction", "output"): "alpaca",
        ("instruction", "response"): "dolly",
        ("prompt", "completion"): "prompt-completion",
    }.get((instr, out), "mapped")
    if fmap:
        name = "mapped"
    return _flat(instr, inp, out, id_key, name)


def _first(keys: set[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in keys), None)


def _guess(keys: set[str], i: int) -> str:
    ordered = sorted(keys)
    return ordered[i] if len(ordered) > i else "FIELD"
