"""The indicator contract: a small class that scores records and can describe itself.

An indicator stores its settings in a keyword-only constructor and does no I/O
there; models load lazily on first `score`. `params()` returns everything needed
to rebuild exactly the same configuration (a Rule stores it), and `key()` is a
stable hash of it used to cache scores.

Conventions the engine relies on:

- `runtime_settings` names settings that change how fast or where scoring runs
  but not the values (`device`, `batch_size`): they are left out of `params()`
  and `key()`, so a score cached on a GPU is reused on a CPU.
- Attributes ending in `_` are state set by `score` (never settings). After
  `score`, a model-backed indicator sets `truncated_` (how many of the records
  it was given were cut at `max_length`) and, where it can, `truncated_mask_`
  (a boolean array, one per record) so that the cache can remember which ones.
- A dataset-level indicator (`dataset_level`, or `set_dependent()` for one
  configuration) is scored on the whole set in one call; its cached scores are
  keyed by a fingerprint of that set as well.
- A derived indicator (`derived_from()` returns another indicator) is a fixed
  transform (`derive`) of that indicator's values: the engine scores and caches
  the other one and transforms, so both share one computation and one cache entry.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from instructmining.records import Record


class Indicator(abc.ABC):
    """Base class of every indicator.

    Class attributes describe it: `name` (also its output column), `description`
    (what it measures), `reads` (record fields used), `direction` (what a higher
    value means), `needs_model` (downloaded weights required for the paper's
    backend), `dataset_level` (a record's value depends on the other records).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ("output",)
    direction: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False
    dataset_level: ClassVar[bool] = False
    #: version of the scoring code; bump it when the computation changes so that
    #: cached scores of the old code are not reused.
    version: ClassVar[int] = 1
    #: settings that do not change the values (where and how fast): not in params()/key().
    runtime_settings: ClassVar[tuple[str, ...]] = ()
    #: the backends this class can use, for listings; empty means "ask an instance".
    backends: ClassVar[tuple[str, ...]] = ()
    #: the model role (`instructmining.models.roles`) its `model` setting names, if any;
    #: profiles check that model through `models.backends` before any scoring.
    model_role: ClassVar[str | None] = None
    #: set by the engine while scoring: call with a record count as records finish
    progress_: Callable[[int], None] | None = None

    @property
    def backend(self) -> str:
        """The method or model that produces the values (part of `params()`)."""
        return "builtin"

    @property
    def columns(self) -> tuple[str, ...]:
        """The output columns; one per indicator unless documented otherwise."""
        return (self.name,)

    def settings(self) -> dict[str, Any]:
        """Constructor settings (public attributes, not fitted `*_` state), JSON-serialisable."""
        return {
            k: v
            for k, v in sorted(vars(self).items())
            if not k.startswith("_") and not k.endswith("_")
        }

    def params(self) -> dict[str, Any]:
        """Full configuration that fixes the values: name, backend, code version, settings.

        Runtime-only settings (`runtime_settings`) are left out. A `dtype` of "auto"
        is stored as the dtype it resolves to here ("fp32", "bf16"): the values
        depend on it, so scores computed in different precisions never share a key.
        """
        out = {
            "name": self.name,
            "backend": self.backend,
            "version": self.version,
            **{k: v for k, v in self.settings().items() if k not in self.runtime_settings},
        }
        if out.get("dtype") == "auto":
            out["dtype"] = _auto_dtype(str(getattr(self, "device", "auto")))
        return out

    def key(self) -> str:
        """Stable hash of `params()`: scores with equal keys are interchangeable."""
        blob = json.dumps(self.params(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def expect(self, n_records: int) -> None:
        """Told how many records the next `score` call gets, before `params()` keys its cache.

        Only an indicator whose configuration depends on the set's size needs it
        (knn6 picks its neighbour search by size); the default does nothing.
        """
        return None

    def set_dependent(self) -> bool:
        """True when a record's value depends on the other records scored with it."""
        return self.dataset_level

    def derived_from(self) -> Indicator | None:
        """The indicator whose values this one transforms (`derive`); None: scored itself."""
        return None

    def derive(self, values: np.ndarray) -> np.ndarray:
        """This indicator's values from those of `derived_from()` (identity by default)."""
        return values

    # --- set-level indicators in phases ---------------------------------------------------
    # A set-dependent indicator may split its work so that the engine can stream and
    # cache it: `fit` once on the set (or a deterministic sample of a large set), then
    # `transform` batch by batch (one feature row or value per record: the expensive,
    # cacheable part, e.g. an embedding), then `finish` on every record's features at
    # once (cheap, e.g. a neighbour search). `score` must give the same values.

    def phased(self) -> bool:
        """True when this configuration runs as fit -> transform -> finish."""
        return False

    def fit_size(self) -> int | None:
        """Most records `fit` reads (a larger set is sampled by key); None: no fit phase."""
        return None

    def fit(self, records: Sequence[Record], n_total: int) -> None:
        """Fit the set-level state on `records`: the whole set of `n_total`, or its sample."""
        return None

    def transform(self, records: Sequence[Record]) -> np.ndarray:
        """Per-record features (rows) or values after `fit`; batch-independent."""
        raise NotImplementedError(f"{self.name} has no transform phase")

    def finish(self, features: np.ndarray) -> np.ndarray:
        """The values of the whole set from every record's `transform` output, in order."""
        return np.asarray(features, dtype=np.float64)

    def features_cacheable(self) -> bool:
        """True when `transform`'s output depends on the record and `params()` only (not on
        the fit), so the engine caches it per record: a new record costs its own features."""
        return False

    def score_phased(self, records: Sequence[Record]) -> np.ndarray:
        """`score` through the phases, in one call (what the engine does in batches)."""
        from instructmining.indicators.keys import fit_sample

        self.expect(len(records))
        if not records:
            return np.empty(0)
        if self.fit_size() is not None:
            self.fit(fit_sample(records, self.fit_size()), len(records))
        return self.finish(self.transform(records))

    def fingerprints(self) -> dict[str, str]:
        """Content hashes of files this configuration reads besides the records (cache keys).

        The default covers a `model` or `reference` setting that is a local path, so
        that a checkpoint or reference file replaced in place is not served stale scores
        (a model's scheme prefix, `hf:` or `gguf:`, is looked through).
        """
        from instructmining.models.backends import split_scheme

        out: dict[str, str] = {}
        for attr in ("model", "reference"):
            value = getattr(self, attr, None)
            if isinstance(value, str) and value:
                if attr == "model":
                    value = split_scheme(value)
                digest = path_fingerprint(value)
                if digest is None and attr == "model":
                    digest = _catalogue_fingerprint(value)
                if digest is not None:
                    out[attr] = digest
        return out

    @abc.abstractmethod
    def score(self, records: Sequence[Record]) -> np.ndarray:
        """One float64 value per record (NaN only where the indicator documents it)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


def path_fingerprint(spec: str) -> str | None:
    """Hash of a local file or folder (names, sizes, modification times); None if not a path.

    Cheap on multi-gigabyte checkpoints (no file is read) and changes whenever a
    file is rewritten.
    """
    from pathlib import Path

    path = Path(spec).expanduser()
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(
            f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
        )
    return h.hexdigest()[:16]


def _auto_dtype(device: str) -> str:
    """The name of the dtype "auto" means for `device` on this machine."""
    from instructmining.models.loading import resolve_device, resolve_dtype

    try:
        where = resolve_device(device)
    except Exception:  # an unusable device fails later, where it is used
        where = "cpu"
    names = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
    return names[str(resolve_dtype("auto", where))]


def _catalogue_fingerprint(name: str) -> str | None:
    """The pinned SHA-256 of a packaged catalogue model (the name stands for that file)."""
    from instructmining.models.catalogue import entry

    e = entry(name)
    return e.packaged.sha256[:16] if e is not None and e.packaged is not None else None
