"""Model schemes: the one place that reads a user's model string and loads its role.

Grammar of a `model` setting (and of `--model KEY=VALUE`):

    hf:NAME_OR_PATH    transformers: a catalogue name, a local folder or a hub id
    st:NAME_OR_PATH    sentence-transformers (an embedder)
    gguf:PATH          a GGUF file, loaded by transformers with `gguf_file=` (a causal LM)
    SCHEME:TARGET      a scheme a plugin registered (entry-point group `instructmining.backends`)
    tfidf-svd, ngram   the non-neural backends of knn6 and perplexity (nothing to load)
    NAME_OR_PATH       a bare name: the role's default scheme (st: for an embedder, hf:
                       otherwise), exactly as before schemes existed

A string is bare when it names an existing path or has no `word:` prefix.
A scheme that cannot give the role asked for, an unknown scheme or an empty
target is a one-line `ModelSpecError` naming the setting and what it takes.

`load(role, spec, ...)` resolves the source (fails fast when it is absent),
applies the device/dtype policy of `models.loading` and returns the role object
from the per-process cache, keyed by `roles.LoadKey`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from instructmining.errors import InstructMiningError, ParameterError
from instructmining.models.roles import (
    CAUSAL_LM,
    EMBEDDER,
    PAIR_SCORER,
    ROLE_TYPES,
    ROLES,
    TOKEN_SCORER,
    YES_NO_SCORER,
    LoadKey,
)

ENTRY_POINT_GROUP = "instructmining.backends"
TFIDF_SVD = "tfidf-svd"
NGRAM = "ngram"
#: non-neural backend names -> the role they stand in for (computed by the indicator)
NON_NEURAL = {TFIDF_SVD: EMBEDDER, NGRAM: TOKEN_SCORER}
#: the scheme a bare name means, per role
DEFAULT_SCHEME = {
    EMBEDDER: "st",
    TOKEN_SCORER: "hf",
    PAIR_SCORER: "hf",
    YES_NO_SCORER: "hf",
    CAUSAL_LM: "hf",
}
_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9_.+-]*):(.*)", re.DOTALL)


class ModelSpecError(ParameterError):
    """A model string whose scheme is unknown, empty or cannot give the role asked for."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model string: its scheme and what follows it."""

    scheme: str
    target: str  # name, path or id; "" for a non-neural backend
    explicit: bool  # the string named its scheme

    @property
    def neural(self) -> bool:
        """False for tfidf-svd and ngram (no model to load)."""
        return self.scheme not in NON_NEURAL

    def __str__(self) -> str:
        if not self.neural:
            return self.scheme
        return f"{self.scheme}:{self.target}" if self.explicit else self.target


@dataclass(frozen=True)
class LoadRequest:
    """What a factory is asked to load: the resolved key, the parsed string, who asks."""

    key: LoadKey
    ref: ModelRef
    indicator: str
    option: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.key.source

    @property
    def device(self) -> str:
        return self.key.device

    @property
    def torch_dtype(self) -> Any:
        from instructmining.models.loading import resolve_dtype

        return resolve_dtype(self.key.dtype, self.key.device)


Factory = Callable[[LoadRequest], Any]
#: (parsed string, indicator, `--model` key) -> the source to load (a local path or hub id)
Resolver = Callable[[ModelRef, str, str | None], str]


@dataclass(frozen=True)
class Backend:
    """A scheme and the roles it loads: `factories[role](request)` returns the role object.

    `resolve` turns the target into the source that identifies the model (a
    path, a hub id) and fails fast when it is absent; None keeps the target.
    `target` is how the target is written in error lines ("NAME_OR_PATH").
    """

    scheme: str
    factories: Mapping[str, Factory]
    resolve: Resolver | None = None
    target: str = "NAME_OR_PATH"
    description: str = ""


# --- the registry -------------------------------------------------------------------------

_BUILTIN: dict[str, Backend] = {}
_PLUGINS: dict[str, Backend] = {}
_plugins_loaded = False


def _builtins() -> dict[str, Backend]:
    if not _BUILTIN:
        from instructmining.models import causal, embedder, reward, seq2seq

        for b in (
            Backend(
                "hf",
                {
                    TOKEN_SCORER: causal.token_scorer,
                    CAUSAL_LM: causal.causal_lm,
                    PAIR_SCORER: reward.pair_scorer,
                    YES_NO_SCORER: seq2seq.yes_no_scorer,
                },
                resolve=_checkpoint,
                description="transformers: catalogue name, local folder or hub id",
            ),
            Backend(
                "st",
                {EMBEDDER: embedder.sentence_transformer},
                resolve=_checkpoint,
                description="sentence-transformers: catalogue name, local folder or hub id",
            ),
            Backend(
                "gguf",
                {TOKEN_SCORER: causal.token_scorer, CAUSAL_LM: causal.causal_lm},
                resolve=_gguf_file,
                target="PATH",
                description="a GGUF file, loaded by transformers (de-quantised)",
            ),
        ):
            _BUILTIN[b.scheme] = b
    return _BUILTIN


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        backend = ep.load()
        if not isinstance(backend, Backend) or backend.scheme != ep.name:
            raise TypeError(
                f"entry point {ep.name!r} ({ep.value}) of {ENTRY_POINT_GROUP} must be a "
                f"models.backends.Backend whose scheme is {ep.name!r}"
            )
        register(backend)


def register(backend: Backend) -> Backend:
    """Add a scheme; a second backend for a scheme or a reserved name is refused."""
    taken = {**_builtins(), **_PLUGINS}
    if not _PREFIX.fullmatch(f"{backend.scheme}:x") or len(backend.scheme) < 2:
        raise ValueError(f"scheme {backend.scheme!r}: use letters, digits, '_', '.', '+', '-'")
    if backend.scheme in NON_NEURAL or backend.scheme != backend.scheme.lower():
        raise ValueError(f"scheme {backend.scheme!r} is reserved or not lower case")
    if backend.scheme in taken and taken[backend.scheme] is not backend:
        raise ValueError(f"scheme {backend.scheme!r} is already registered; choose another")
    unknown = sorted(set(backend.factories) - set(ROLES))
    if unknown:
        raise ValueError(
            f"scheme {backend.scheme!r}: unknown roles {unknown}; roles: {list(ROLES)}"
        )
    _PLUGINS[backend.scheme] = backend
    return backend


def registered() -> dict[str, Backend]:
    """Every scheme: the built-in ones, then plugins."""
    _load_plugins()
    return {**_builtins(), **_PLUGINS}


def _lookup(scheme: str) -> Backend | None:
    found = _builtins().get(scheme) or _PLUGINS.get(scheme)
    if found is None and not _plugins_loaded:  # built-in schemes never scan entry points
        _load_plugins()
        found = _PLUGINS.get(scheme)
    return found


def known_schemes() -> str:
    """Every scheme as written, for error lines: "hf:, st:, gguf:, tfidf-svd, ngram"."""
    return ", ".join([*(f"{s}:" for s in registered()), *NON_NEURAL])


def accepted(role: str) -> str:
    """How a setting of `role` may be written: "hf:NAME_OR_PATH, gguf:PATH or ngram"."""
    forms = [f"{b.scheme}:{b.target}" for b in registered().values() if role in b.factories]
    forms += [name for name, r in NON_NEURAL.items() if r == role]
    forms.append(f"a bare NAME_OR_PATH (= {DEFAULT_SCHEME[role]}:)")
    return ", ".join(forms[:-1]) + " or " + forms[-1]


# --- parsing --------------------------------------------------------------------------------


def parse(spec: str, role: str, *, indicator: str, param: str = "model") -> ModelRef:
    """The scheme and target of `spec` for `role`; ModelSpecError (one line) otherwise."""
    where = f"{indicator}: {param} {spec!r}"
    if spec in NON_NEURAL:
        if NON_NEURAL[spec] != role:
            raise ModelSpecError(
                f"{where}: {spec} does not give {ROLES[role]}; it takes {accepted(role)}"
            )
        return ModelRef(spec, "", explicit=True)
    match = _PREFIX.fullmatch(spec)
    if match is None or len(match.group(1)) == 1 or _exists(spec):
        return ModelRef(DEFAULT_SCHEME[role], spec, explicit=False)
    scheme, target = match.group(1).lower(), match.group(2)
    backend = _lookup(scheme)
    if backend is None:
        raise ModelSpecError(
            f"{where}: unknown scheme {scheme}:; known schemes: {known_schemes()} "
            f"(plugins add more under the {ENTRY_POINT_GROUP} entry points)"
        )
    if role not in backend.factories:
        raise ModelSpecError(
            f"{where}: {scheme}: does not give {ROLES[role]}; it takes {accepted(role)}"
        )
    if not target.strip():
        raise ModelSpecError(f"{where}: nothing follows {scheme}:; write {scheme}:{backend.target}")
    return ModelRef(scheme, target, explicit=True)


def _exists(spec: str) -> bool:
    try:
        return Path(spec).expanduser().exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte
        return False


def split_scheme(spec: str) -> str:
    """The target of `spec` with a registered scheme prefix removed (never raises)."""
    match = _PREFIX.fullmatch(spec)
    if match is None or _exists(spec):
        return spec
    return match.group(2) if _lookup(match.group(1).lower()) is not None else spec


# --- sources and loading --------------------------------------------------------------------


def _checkpoint(ref: ModelRef, indicator: str, option: str | None) -> str:
    from instructmining.models.loading import check_model_source

    return check_model_source(ref.target, indicator=indicator, option=option)


def _gguf_file(ref: ModelRef, indicator: str, option: str | None) -> str:
    from instructmining.models.loading import ModelUnavailableError

    path = Path(ref.target).expanduser()
    if not path.is_file():
        raise ModelUnavailableError(
            f"{indicator}: GGUF file {ref.target!r} does not exist; write gguf:PATH with the "
            "path of a .gguf file"
        )
    return str(path)


def check(role: str, spec: str, *, indicator: str, option: str | None = None) -> str | None:
    """The source `spec` loads from, checked now (fail fast); None for tfidf-svd/ngram."""
    ref = parse(spec, role, indicator=indicator)
    if not ref.neural:
        return None
    backend = _lookup(ref.scheme)
    assert backend is not None  # parse found it
    return backend.resolve(ref, indicator, option) if backend.resolve else ref.target


def load(
    role: str,
    spec: str,
    *,
    indicator: str,
    option: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    **options: Any,
) -> Any:
    """The role object for `spec`, loaded once per process per `LoadKey`.

    `option` is the `--model` key named in errors (default: the indicator);
    `options` are load-time settings that make a distinct role object.
    """
    from instructmining.models.loading import dtype_name, resolve_device, resolve_dtype

    ref = parse(spec, role, indicator=indicator)
    if not ref.neural:
        raise ModelSpecError(f"{indicator}: {ref.scheme} is computed by the indicator itself")
    source = check(role, spec, indicator=indicator, option=option)
    assert source is not None
    where = resolve_device(device)
    name = dtype_name(resolve_dtype(dtype, where))
    return load_source(
        role, ref, source, device=where, dtype=name, indicator=indicator, option=option, **options
    )


def load_source(
    role: str,
    ref: ModelRef,
    source: str,
    *,
    device: str,
    dtype: str,
    indicator: str,
    option: str | None = None,
    **options: Any,
) -> Any:
    """`load` for a source already resolved and a resolved device and dtype name."""
    from instructmining.models.loading import cached

    key = LoadKey(role, ref.scheme, source, dtype, device, tuple(sorted(options.items())))
    backend = _lookup(ref.scheme)
    if backend is None or role not in backend.factories:
        raise ModelSpecError(f"{indicator}: {ref.scheme}: does not give {ROLES[role]}")
    request = LoadRequest(key, ref, indicator, option, dict(options))

    def build() -> Any:
        made = backend.factories[role](request)
        if not isinstance(made, ROLE_TYPES[role]):
            raise InstructMiningError(
                f"{indicator}: the {ref.scheme}: backend returned {type(made).__name__!r}, not "
                f"{ROLES[role]} ({ROLE_TYPES[role].__name__}); fix its factory"
            )
        return made

    return cached(key, build)
