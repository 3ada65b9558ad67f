"""Indicator scoring for the study, through the engine and its score cache when it has one."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from instructmining.indicators.base import Indicator
from instructmining.records import Record


def default_indicators() -> list[str]:
    """The offline profile's indicators (no downloaded weights) that are registered."""
    from instructmining.indicators.registry import registered

    classes = registered()
    try:
        from instructmining.indicators.profiles import OFFLINE_INDICATORS
    except ImportError:  # an indicators package without profiles: every weight-free one
        return [name for name, cls in classes.items() if not cls.needs_model]
    return [name for name in OFFLINE_INDICATORS if name in classes]


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
    """engine.score through the score cache at `cache` (a DataFrame: id + columns)."""
    from instructmining.indicators import engine

    kwargs: dict[str, Any] = {"progress": progress}
    if cache is not None and "cache" in inspect.signature(engine.score).parameters:
        kwargs["cache"] = str(cache)
    return engine.score(records, list(indicators), **kwargs)
