"""Profiles: which indicators to compute and with which checkpoints.

- "local" (the default when the packaged models are installed): real models
  that need no hub: input_length, output_length, mtld, knn6 in the
  all-MiniLM-L6-v2 space, perplexity of the response given the prompt under
  SmolLM2-135M-Instruct with its chat template, and ifd under the same model.
- "lite" (the default otherwise; "offline" is its old name): seconds-fast
  proxies with no torch weights: input_length, output_length, mtld, knn6
  (TF-IDF + truncated SVD space), perplexity (Witten-Bell n-gram cross-fitted
  on the scored set).
  In both, the paper's other model-backed indicators are left out, each with
  the reason, unless a checkpoint is given for it with `models`.
- "paper": the paper's nine indicators with the paper's checkpoints; every
  checkpoint is checked before any work and a missing one fails at once,
  naming it and how to pass a local copy.

Indicators are found by registry name only, so model-backed indicators added
by other modules or plugins join a profile as soon as they are registered.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from instructmining.errors import ParameterError
from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import indicator_class, registered

PROFILES = ("local", "lite", "paper")
#: old profile names still accepted
PROFILE_ALIASES = {"offline": "lite"}
PAPER_INDICATORS = (
    "input_length",
    "output_length",
    "reward",
    "perplexity",
    "mtld",
    "knn6",
    "naturalness",
    "coherence",
    "understandability",
)
OFFLINE_INDICATORS = ("input_length", "output_length", "mtld", "knn6", "perplexity")
UNIEVAL = ("naturalness", "coherence", "understandability")
LOCAL_INDICATORS = ("input_length", "output_length", "mtld", "knn6", "perplexity", "ifd")
#: catalogue models of the local profile (all shipped in registry packages)
LOCAL_MODELS: dict[str, str] = {
    "knn6": "all-minilm-l6-v2",
    "perplexity": "smollm2-135m-instruct",
    "log_perplexity": "smollm2-135m-instruct",
    "ifd": "smollm2-135m-instruct",
}
#: checkpoints of the paper's profile (`model` setting per indicator)
PAPER_MODELS: dict[str, str] = {
    "reward": "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5",
    "perplexity": "meta-llama/Llama-2-7b-hf",
    "log_perplexity": "meta-llama/Llama-2-7b-hf",
    # the paper says "SentenceBERT" without naming a checkpoint; this is the
    # sentence-transformers project's general-purpose default
    "knn6": "sentence-transformers/all-mpnet-base-v2",
    "naturalness": "MingZhong/unieval-dialog",
    "coherence": "MingZhong/unieval-dialog",
    "understandability": "MingZhong/unieval-dialog",
}
#: `--model` keys that set several indicators at once
MODEL_GROUPS: dict[str, tuple[str, ...]] = {"unieval": UNIEVAL}
#: settings forwarded to every indicator whose constructor accepts them
RUNTIME_KEYS = ("device", "batch_size", "max_length", "dtype")


@dataclass
class Plan:
    """The indicators a profile resolves to, and those it left out with the reason."""

    profile: str
    indicators: list[Indicator]
    left_out: dict[str, str] = field(default_factory=dict)


def default_profile() -> str:
    """`$INSTRUCTMINING_PROFILE`, else "local" when its packaged models are installed, else "lite"."""
    import os

    env = os.environ.get("INSTRUCTMINING_PROFILE")
    if env:
        return PROFILE_ALIASES.get(env, env)
    from instructmining.models.catalogue import entry, is_materialised, packaged_file

    for name in set(LOCAL_MODELS.values()):
        e = entry(name)
        if e is None or e.packaged is None:
            return "lite"
        if packaged_file(e.packaged) is None and not is_materialised(e):
            return "lite"
    return "local"


def model_keys() -> list[str]:
    """Valid `--model` keys: registered indicators taking a `model` setting, plus groups."""
    keys = [name for name, cls in registered().items() if _accepts(cls, "model")]
    return sorted({*keys, *MODEL_GROUPS})


def expand_models(models: Mapping[str, str]) -> dict[str, str]:
    """`{"unieval": P}` → one entry per UniEval indicator; unknown keys → KeyError listing keys."""
    out: dict[str, str] = {}
    known = model_keys()
    for key, value in models.items():
        if key in MODEL_GROUPS:
            for name in MODEL_GROUPS[key]:
                out.setdefault(name, value)
        elif key in known or key in PAPER_MODELS:
            out[key] = value
        else:
            raise KeyError(f"--model {key}=...: unknown key; choose from {', '.join(known)}")
    # an explicit per-indicator key wins over its group
    out.update({k: v for k, v in models.items() if k not in MODEL_GROUPS})
    return out


def _accepts(cls: type[Indicator], setting: str) -> bool:
    if cls.__init__ is object.__init__:  # no settings at all
        return False
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False
    return setting in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _option_key(name: str) -> str:
    for group, members in MODEL_GROUPS.items():
        if name in members:
            return group
    return name


def build(
    profile: str | None = None,
    *,
    names: Sequence[str] | None = None,
    models: Mapping[str, str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    check_models: bool = True,
    **runtime: Any,
) -> Plan:
    """Resolve a profile (default "offline") or explicit `names` to indicator objects.

    `models` maps indicator names (or "unieval") to checkpoints; `settings` gives
    extra keyword settings per indicator; `runtime` (device, batch_size,
    max_length, dtype; None = the indicator's default) goes to every indicator
    that accepts it. With `check_models`, every checkpoint is checked before any
    scoring (fail fast with the fix in the message).
    """
    unknown = sorted(set(runtime) - set(RUNTIME_KEYS))
    if unknown:
        raise TypeError(f"build() got unexpected settings: {', '.join(unknown)}")
    chosen = PROFILE_ALIASES.get(profile or "", profile or default_profile())
    if chosen not in PROFILES:
        raise KeyError(f"unknown profile {chosen!r}; choose from {', '.join(PROFILES)}")
    base_models = LOCAL_MODELS if chosen == "local" else PAPER_MODELS
    overrides = expand_models(models or {})
    classes = registered()
    left_out: dict[str, str] = {}
    if names is not None:
        wanted = list(names)
        for name in wanted:
            indicator_class(name)  # KeyError listing the choices
    elif chosen == "paper":
        wanted = list(PAPER_INDICATORS)
    else:
        wanted = list(LOCAL_INDICATORS if chosen == "local" else OFFLINE_INDICATORS)
        for name in PAPER_INDICATORS:
            if name in wanted:
                continue
            if name in overrides and name in classes:
                wanted.append(name)  # a checkpoint given for it: computed after all
            else:
                left_out[name] = (
                    f"needs downloaded weights ({PAPER_MODELS.get(name, 'a checkpoint')}); "
                    f"pass --model {_option_key(name)}=PATH or use --profile paper"
                )
    built: list[Indicator] = []
    for name in wanted:
        cls = classes.get(name)
        if cls is None:
            left_out[name] = "not available: no registered indicator of this name"
            continue
        kwargs: dict[str, Any] = dict((settings or {}).get(name, {}))
        if name in overrides:
            kwargs["model"] = overrides[name]
        elif chosen != "lite" and name in base_models and _accepts(cls, "model"):
            kwargs.setdefault("model", base_models[name])
        for key in RUNTIME_KEYS:
            if runtime.get(key) is not None and _accepts(cls, key):
                kwargs[key] = runtime[key]
        ind = cls(**kwargs)
        # knn6 and perplexity also "need a model" for the paper, but have model-free
        # backends (tfidf-svd, ngram); only an indicator without one is refused here
        if getattr(cls, "requires_model", False) and not getattr(ind, "model", None):
            raise ParameterError(
                f"{name} needs a model and the {chosen} profile gives it none: pass "
                f"--model {name}=NAME_OR_PATH (e.g. {LOCAL_MODELS.get(name, 'a checkpoint')}) "
                "or use --profile local"
            )
        if check_models:
            _check_model(ind)
        built.append(ind)
    return Plan(chosen, built, left_out)


def _check_model(ind: Indicator) -> None:
    """Fail fast when the indicator's checkpoint cannot be loaded here."""
    spec = getattr(ind, "model", None)
    if not isinstance(spec, str) or not spec or ind.backend in ("ngram", "tfidf-svd"):
        return
    if ind.model_role is not None:  # through its scheme (hf:, st:, gguf:, a plugin's)
        from instructmining.models.backends import check

        check(ind.model_role, spec, indicator=ind.name, option=_option_key(ind.name))
        return
    from instructmining.models.loading import check_model_source

    check_model_source(spec, indicator=ind.name, option=_option_key(ind.name))
