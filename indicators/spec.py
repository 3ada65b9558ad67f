"""Stored indicator settings → a checked indicator: the one gate between a file and a constructor.

Rules (`indicators`), study manifests (`indicators`) and any other file the tool
reads are data, never code. Every path that rebuilds an indicator from such a
file comes through `check_params` (settings only) or `build` (the indicator),
which refuse, with one line naming the file, the indicator and the setting:

- `trust_remote_code` with any value but `false` (the default, which
  `reward.params()` writes): loading a checkpoint that way runs Python shipped
  in the model's folder. Only code, never a file, may turn it on;
- a setting the indicator's constructor does not take (the line lists those it does);
- a value of the wrong type or out of range: the type comes from the
  constructor's annotation (else its default), integers are plain integers
  (never true/false) within ±10^9, floats are finite, strings are short and
  free of NUL characters, and a few settings have their own bounds (k >= 1,
  dtype one of auto|fp32|fp16|bf16, ...);
- a stored `version` other than the class's (the scores would not be those the
  settings were recorded with), and a stored `backend` the settings do not give.

Errors are `IndicatorSettingsError` (a `ParameterError`: exit code 2, printed
by the command line as one line without a traceback).
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from instructmining.errors import ParameterError
from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import DESCRIPTIVE_PARAMS, registered

#: settings a file may not turn on (a stored `false`, their default, is accepted)
REFUSED_SETTINGS = ("trust_remote_code",)
#: largest magnitude of an integer setting
MAX_INT = 10**9
#: largest magnitude of a float setting
MAX_FLOAT = 1e9
#: longest string setting (a model id or a path)
MAX_TEXT = 4096

_SCALARS = frozenset({"int", "float", "str", "bool", "none"})
#: smallest value of integer settings, whichever indicator has them
_INT_MIN = {
    "k": 1,
    "dims": 1,
    "batch_size": 1,
    "max_length": 2,
    "token_budget": 1,
    "order": 1,
    "folds": 2,
}
#: per indicator: smallest values that differ from `_INT_MIN`
_INT_MIN_FOR = {
    "reward": {"max_length": 8},
    "naturalness": {"max_length": 8},
    "coherence": {"max_length": 8},
    "understandability": {"max_length": 8},
}
#: per indicator: float settings inside an open interval
_FLOAT_OPEN = {"mtld": {"threshold": (0.0, 1.0)}}
DTYPES = ("auto", "fp32", "fp16", "bf16")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?")


class IndicatorSettingsError(ParameterError):
    """Stored indicator settings that cannot be used; the message names file, indicator, setting."""


def _show(value: Any) -> str:
    """A short, one-line rendering of a value read from a file."""
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, int) and abs(value) >= 10**18:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits} digits"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if not isinstance(value, (int, float, str)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(source: str | Path | None, name: str | None = None) -> str:
    parts = [str(source)] if source not in (None, "") else []
    if name is not None:
        parts.append(f"indicator {_show(name)}")
    return ": ".join(parts) if parts else "indicator settings"


def _fail(where: str, message: str) -> IndicatorSettingsError:
    return IndicatorSettingsError(f"{where}: {message}")


# --- what a constructor takes -------------------------------------------------------------


def constructor_settings(cls: type[Indicator]) -> tuple[dict[str, inspect.Parameter], bool]:
    """(keyword settings of `cls.__init__` by name, whether it also takes `**kwargs`)."""
    if cls.__init__ is object.__init__:
        return {}, False
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - no signature to read
        return {}, True
    named = {
        p.name: p for p in params.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    return named, any(p.kind is p.VAR_KEYWORD for p in params.values())


def allowed_settings(cls: type[Indicator]) -> tuple[str, ...]:
    """Settings a file may give `cls`, in constructor order."""
    named, _ = constructor_settings(cls)
    return tuple(n for n in named if n not in REFUSED_SETTINGS and n not in DESCRIPTIVE_PARAMS)


def _kinds_of_annotation(annotation: Any) -> frozenset[str] | None:
    names = {int: "int", float: "float", str: "str", bool: "bool", type(None): "none"}
    if isinstance(annotation, str):
        table = {"int": "int", "float": "float", "str": "str", "bool": "bool", "None": "none"}
        parts = [p.strip() for p in annotation.split("|")]
        if all(p in table for p in parts):
            return frozenset(table[p] for p in parts)
        return None
    if annotation in names:
        return frozenset({names[annotation]})
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if all(a in names for a in args):
            return frozenset(names[a] for a in args)
    return None


def _kinds(param: inspect.Parameter) -> frozenset[str]:
    """The JSON kinds a setting takes: from its annotation, else its default, else any scalar."""
    if param.annotation is not param.empty:
        kinds = _kinds_of_annotation(param.annotation)
        if kinds is not None:
            return kinds
    default = param.default
    if isinstance(default, bool):
        return frozenset({"bool"})
    if isinstance(default, int):
        return frozenset({"int"})
    if isinstance(default, float):
        return frozenset({"float"})
    if isinstance(default, str):
        return frozenset({"str"})
    return _SCALARS


_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "none": "null",
}


def _check_value(indicator: str, key: str, value: Any, kinds: frozenset[str], where: str) -> None:
    """Type and range of one stored setting (see the module docstring)."""
    expected = " or ".join(_KIND_WORDS[k] for k in sorted(kinds, key=list(_KIND_WORDS).index))

    def wrong() -> IndicatorSettingsError:
        return _fail(where, f"setting {key!r} must be {expected}; got {_show(value)}")

    if value is None:
        if "none" not in kinds:
            raise wrong()
        return
    if isinstance(value, bool):
        if "bool" not in kinds:
            raise wrong()
        return
    if isinstance(value, int):
        if "int" not in kinds and "float" not in kinds:
            raise wrong()
        if abs(value) > MAX_INT:
            raise _fail(where, f"setting {key!r} must be within ±{MAX_INT:,}; got {_show(value)}")
        low = _INT_MIN_FOR.get(indicator, {}).get(key, _INT_MIN.get(key))
        if "int" in kinds and low is not None and value < low:
            raise _fail(where, f"setting {key!r} must be an integer >= {low}; got {value}")
    elif isinstance(value, float):
        if "float" not in kinds:
            raise wrong()
        if not math.isfinite(value) or abs(value) > MAX_FLOAT:
            raise _fail(where, f"setting {key!r} must be a finite number; got {_show(value)}")
    elif isinstance(value, str):
        if "str" not in kinds:
            raise wrong()
        if len(value) > MAX_TEXT or "\x00" in value:
            raise _fail(
                where,
                f"setting {key!r} must be a string of at most {MAX_TEXT} characters "
                f"without NUL; got {_show(value)}",
            )
        choices = _choices(indicator, key)
        if choices is not None and value not in choices:
            raise _fail(
                where, f"setting {key!r} must be one of {', '.join(choices)}; got {_show(value)}"
            )
        if key == "device" and not _DEVICE.fullmatch(value):
            raise _fail(
                where, f"setting 'device' must be auto, cpu or cuda[:N]; got {_show(value)}"
            )
    else:  # lists, objects: no built-in setting takes one
        raise wrong()
    interval = _FLOAT_OPEN.get(indicator, {}).get(key)
    if interval is not None and not interval[0] < float(value) < interval[1]:
        raise _fail(
            where,
            f"setting {key!r} must be in ({interval[0]:g}, {interval[1]:g}); got {_show(value)}",
        )


def _choices(indicator: str, key: str) -> tuple[str, ...] | None:
    if key == "dtype":
        return DTYPES
    if key == "index" and indicator == "knn6":
        from instructmining.neighbours import INDEXES

        return INDEXES
    if key == "template" and indicator == "reward":
        from instructmining.indicators.reward import TEMPLATES

        return tuple(TEMPLATES)
    if key == "template" and indicator in ("perplexity", "log_perplexity", "ifd"):
        from instructmining.models.causal import TEMPLATES as CAUSAL_TEMPLATES

        return tuple(CAUSAL_TEMPLATES)
    return None


# --- the gate ------------------------------------------------------------------------------


def check_params(
    spec: str | Mapping[str, Any],
    *,
    source: str | Path | None = None,
    name: str | None = None,
    check_version: bool = True,
) -> tuple[type[Indicator], dict[str, Any]]:
    """(the indicator class, its checked constructor settings) from stored `params()`.

    `source` names where the settings were read (a file, a rule) for the error line;
    `name` is the indicator they must describe (a rule's column), used when the stored
    settings carry no name. `check_version` False skips the code-version comparison
    (for copying settings, not computing scores). IndicatorSettingsError otherwise.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise _fail(
            _where(source, name),
            f"stored settings must be an object with a 'name'; got {_show(spec)}",
        )
    stored_name = spec.get("name", name)
    where = _where(source, stored_name if isinstance(stored_name, str) else name)
    if stored_name is None:
        raise _fail(where, "the stored settings have no 'name'")
    if not isinstance(stored_name, str) or not stored_name:
        raise _fail(where, f"'name' must be an indicator name; got {_show(stored_name)}")
    if name is not None and stored_name != name:
        raise _fail(
            _where(source, name), f"its stored settings name indicator {_show(stored_name)}"
        )
    classes = registered()
    cls = classes.get(stored_name)
    if cls is None:
        raise _fail(
            where,
            f"not registered here (registered: {', '.join(sorted(classes))}); "
            "install the plugin that provides it",
        )
    named, takes_any = constructor_settings(cls)
    allowed = ", ".join(allowed_settings(cls)) or "none"

    version = spec.get("version")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int):
            raise _fail(where, f"'version' must be an integer; got {_show(version)}")
        if check_version and version != cls.version:
            raise _fail(
                where,
                f"settings stored with version {_show(version)} of its code, but this "
                f"installation has version {cls.version}: its scores would differ from those "
                "they were recorded with; rescore with this version (refit the rule, replan "
                "the study)",
            )
    backend = spec.get("backend")
    if backend is not None and (not isinstance(backend, str) or len(backend) > MAX_TEXT):
        raise _fail(where, f"'backend' must be a string; got {_show(backend)}")

    settings: dict[str, Any] = {}
    for key, value in spec.items():
        if key in DESCRIPTIVE_PARAMS:
            continue
        if not isinstance(key, str):
            raise _fail(where, f"setting names must be strings; got {_show(key)}")
        if key in REFUSED_SETTINGS:
            if value is False and key in named:  # the default, which loads no code
                continue
            raise _fail(
                where,
                f"setting {_show(key)} is refused in stored settings (it would run Python "
                f"code from the model's folder); remove it; allowed settings: {allowed}",
            )
        param = named.get(key)
        if param is None and not takes_any:
            raise _fail(where, f"unknown setting {_show(key)}; allowed settings: {allowed}")
        kinds = _kinds(param) if param is not None else _SCALARS
        _check_value(stored_name, key, value, kinds, where)
        settings[key] = value
    return cls, settings


def check_backend(
    indicator: Indicator, spec: Mapping[str, Any], *, source: str | Path | None = None
) -> None:
    """Refuse an indicator whose backend differs from the one stored with its settings."""
    stored = spec.get("backend") if isinstance(spec, Mapping) else None
    if stored is None:
        return
    actual = indicator.backend
    if stored != actual:
        raise _fail(
            _where(source, indicator.name),
            f"stored with backend {_show(stored)} but its settings give {actual!r}: its scores "
            "would differ from those the settings were recorded with",
        )


def build(
    spec: str | Mapping[str, Any],
    *,
    source: str | Path | None = None,
    name: str | None = None,
    check_version: bool = True,
) -> Indicator:
    """The indicator described by stored `params()` (or a name), after `check_params`."""
    cls, settings = check_params(spec, source=source, name=name, check_version=check_version)
    try:
        indicator = cls(**settings)
    except (TypeError, ValueError) as exc:
        raise _fail(_where(source, cls.name), str(exc).replace("\n", " ")) from None
    if isinstance(spec, Mapping):
        check_backend(indicator, spec, source=source)
    return indicator


# --- settings given on the command line ----------------------------------------------------

#: settings with their own option (`--model`, `--device`, ...), refused by `--set`
_OWN_OPTIONS = {
    "model": "--model",
    "device": "--device",
    "batch_size": "--batch-size",
    "max_length": "--max-length",
    "dtype": "--dtype",
}


def _typed(text: str, kinds: frozenset[str]) -> Any:
    """`text` as the first JSON kind of `kinds` it reads as (null, bool, int, float, else str)."""
    word = text.strip()
    if "none" in kinds and word.lower() in ("null", "none"):
        return None
    if "bool" in kinds and word.lower() in ("true", "false"):
        return word.lower() == "true"
    if "int" in kinds and re.fullmatch(r"[+-]?\d+", word):
        return int(word)
    if "float" in kinds:
        try:
            return float(word)
        except ValueError:
            pass
    return text


def parse_setting(text: str, *, option: str = "--set") -> tuple[str, str, Any]:
    """(indicator, setting, value) from ``IND.KEY=VALUE``, typed and checked like a stored one.

    The value is read as the kind the constructor takes (an integer for `k`, true/false
    for a flag, a string for a choice such as knn6's `index`); `check_params` then
    refuses an unknown indicator or setting, a wrong type or an out-of-range value.
    """
    head, sep, value = text.partition("=")
    indicator, dot, key = head.strip().partition(".")
    if not sep or not dot or not indicator or not key:
        raise ParameterError(f"{option} {text!r}: expected IND.KEY=VALUE, e.g. knn6.k=10")
    if key in _OWN_OPTIONS:
        raise ParameterError(f"{option} {text!r}: give {key} with {_OWN_OPTIONS[key]}")
    cls = registered().get(indicator)
    if cls is None:
        raise ParameterError(
            f"{option} {text!r}: no indicator {indicator!r}; "
            f"registered: {', '.join(sorted(registered()))}"
        )
    named, _ = constructor_settings(cls)
    kinds = _kinds(named[key]) if key in named else _SCALARS
    typed = _typed(value, kinds)
    check_params({"name": indicator, key: typed}, source=option)
    return indicator, key, typed


def parse_settings(texts: Any, *, option: str = "--set") -> dict[str, dict[str, Any]]:
    """Every ``IND.KEY=VALUE`` of a repeated option, grouped by indicator."""
    out: dict[str, dict[str, Any]] = {}
    for text in texts or ():
        indicator, key, value = parse_setting(text, option=option)
        out.setdefault(indicator, {})[key] = value
    return out
