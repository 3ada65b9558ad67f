"""Indicator scoring for the study, through the engine and its score cache when it has one."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from instructmining.indicators.base import Indicator
from instructmining.records import Record


def default_indicators() -> list[str]:
    """The offline profile's indicators (no downloaded weights), else every weight-free one."""
    try:
        from instructmining.indicators import profiles
    except ImportError:
        profiles = None  # type: ignore[assignment]
    if profiles is not None:
        names = _profile_names(profiles)
        if names:
            return names
    from instructmining.indicators.registry import registered

    return [name for name, cls in registered().items() if not cls.needs_model]


def _profile_names(profiles: Any) -> list[str]:
    for attr in ("offline_indicators", "OFFLINE"):
        value = getattr(profiles, attr, None)
        if callable(value):
            value = value()
        if value:
            return [v if isinstance(v, str) else v.name for v in value]
    get = getattr(profiles, "profile", None) or getattr(profiles, "get_profile", None)
    if callable(get):
        value = get("offline")
        value = getattr(value, "indicators", value)
        return [v if isinstance(v, str) else v.name for v in value]
    return []


def build_indicators(specs: Sequence[str | Mapping[str, Any]]) -> list[Indicator]:
    """Indicators from names or stored params (the `params()` dicts a manifest keeps)."""
    from instructmining.indicators.registry import create

    out = []
    for spec in specs:
        if isinstance(spec, str):
            out.append(create(spec))
        else:
            settings = {k: v for k, v in spec.items() if k not in ("name", "backend", "version")}
            out.append(create(str(spec["name"]), **settings))
    return out


def score_records(
    records: Sequence[Record],
    indicators: Sequence[Indicator],
    *,
    cache: str | Path | None = None,
    progress: bool = False,
) -> Any:
    """engine.score with `cache=` when the engine supports it (a DataFrame: id + columns)."""
    from instructmining.indicators import engine

    kwargs: dict[str, Any] = {"progress": progress}
    if cache is not None and "cache" in inspect.signature(engine.score).parameters:
        kwargs["cache"] = str(cache)
    return engine.score(records, list(indicators), **kwargs)
