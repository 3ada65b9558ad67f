"""Name → indicator class registry; plugins add classes through an entry-point group."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from instructmining.indicators.base import Indicator

ENTRY_POINT_GROUP = "instructmining.indicators"
_REGISTRY: dict[str, type[Indicator]] = {}
_plugins_loaded = False


def register(cls: type[Indicator]) -> type[Indicator]:
    """Class decorator adding an indicator; a second class under the same name is refused."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{cls.__qualname__}.name must be an identifier, got {name!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"indicator {name!r} is already registered by {existing.__module__}."
            f"{existing.__qualname__}; choose another name"
        )
    _REGISTRY[name] = cls
    return cls


_BUILTIN_MODULES = ("length", "mtld", "knn", "perplexity", "ifd", "reward", "unieval")


def _load_builtins() -> None:
    # Importing the modules runs their @register decorators; they import nothing heavy.
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(f"instructmining.indicators.{module}")


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Indicator)):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not an Indicator class")
        register(cls)


def registered() -> dict[str, type[Indicator]]:
    """All indicator classes by name: the built-in ones, then plugins."""
    _load_builtins()
    _load_plugins()
    return dict(_REGISTRY)


def indicator_class(name: str) -> type[Indicator]:
    """The class registered under `name`; KeyError lists the choices."""
    classes = registered()
    try:
        return classes[name]
    except KeyError:
        raise KeyError(
            f"unknown indicator {name!r}; registered: {', '.join(sorted(classes))}"
        ) from None


def create(name: str, **settings: Any) -> Indicator:
    """Build the indicator `name` with keyword settings given by code (files: `from_params`)."""
    return indicator_class(name)(**settings)


#: keys of `Indicator.params()` that describe an indicator rather than configure it
DESCRIPTIVE_PARAMS = ("name", "backend", "version")


def from_params(
    spec: str | Mapping[str, Any],
    *,
    source: str | Path | None = None,
    name: str | None = None,
    check_version: bool = True,
) -> Indicator:
    """Rebuild an indicator from a name or stored `params()` (rules, study manifests), checked.

    Stored settings are data: `indicators.spec.build` refuses `trust_remote_code`,
    settings the constructor does not take, values of the wrong type or out of
    range, and a `version` or `backend` other than this installation's, with one
    line naming `source` (the file), the indicator and the setting.
    """
    from instructmining.indicators.spec import build

    return build(spec, source=source, name=name, check_version=check_version)
