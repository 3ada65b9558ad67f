"""Planning a scoring run: which indicator objects, with which settings, and what was left out.

One place builds indicators from names, objects or a profile, and refuses an
indicator named twice, so every workflow (score, select, study) plans the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import create


def resolve(indicators: Sequence[str | Indicator]) -> list[Indicator]:
    """Indicator objects from names or objects; duplicate names are refused."""
    built = [create(i) if isinstance(i, str) else i for i in indicators]
    _refuse_duplicates([i.name for i in built])
    return built


def _refuse_duplicates(names: Sequence[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"indicators: {', '.join(dupes)} given more than once")


def plan_indicators(
    indicators: Sequence[str | Indicator] | None = None,
    *,
    profile: str | None = None,
    models: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """The profile's `Plan` (indicators and left-out reasons); explicit objects are kept as given.

    `settings`: extra constructor settings by indicator name (`--set IND.KEY=VALUE`);
    one for an indicator the plan does not score is refused.
    """
    from instructmining.indicators.profiles import Plan, build

    runtime: dict[str, Any] = {
        "device": device,
        "batch_size": batch_size,
        "max_length": max_length,
        "dtype": dtype,
    }
    if indicators is not None and not all(isinstance(i, str) for i in indicators):
        if models or profile or settings or any(v is not None for v in runtime.values()):
            raise ValueError(
                "indicator objects carry their own settings; pass names to use profile/models"
            )
        return Plan("custom", resolve(indicators))
    names = None if indicators is None else [str(i) for i in indicators]
    if names is not None:
        _refuse_duplicates(names)
    plan = build(
        profile,
        names=names,
        models=models,
        settings={k: dict(v) for k, v in (settings or {}).items()},
        **runtime,
    )
    unused = sorted(set(settings or {}) - {ind.name for ind in plan.indicators})
    if unused:
        from instructmining.errors import ParameterError

        raise ParameterError(
            f"--set {', '.join(unused)}.*: not among the indicators scored "
            f"({', '.join(ind.name for ind in plan.indicators)}); add it with --indicators"
        )
    return plan


def describe_backend(params: Mapping[str, Any]) -> str:
    """How a column was computed, in a few words: backend, model and dtype when it has them."""
    text = str(params.get("backend", ""))
    if params.get("model"):
        text += f" {params['model']}"
        if params.get("dtype"):
            text += f" ({params['dtype']})"
    return text
