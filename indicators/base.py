"""The indicator contract: a small class that scores records and can describe itself.

An indicator stores its settings in a keyword-only constructor and does no I/O
there; models load lazily on first `score`. `params()` returns everything needed
to rebuild exactly the same configuration (a Rule stores it), and `key()` is a
stable hash of it used to cache scores.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Sequence
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

    @property
    def backend(self) -> str:
        """The method or model that produces the values (part of `params()`)."""
        return "builtin"

    @property
    def columns(self) -> tuple[str, ...]:
        """The output columns; one per indicator unless documented otherwise."""
        return (self.name,)

    def settings(self) -> dict[str, Any]:
        """Constructor settings (public attributes), JSON-serialisable."""
        return {k: v for k, v in sorted(vars(self).items()) if not k.startswith("_")}

    def params(self) -> dict[str, Any]:
        """Full configuration: name, backend, code version and settings."""
        return {
            "name": self.name,
            "backend": self.backend,
            "version": self.version,
            **self.settings(),
        }

    def key(self) -> str:
        """Stable hash of `params()`: scores with equal keys are interchangeable."""
        blob = json.dumps(self.params(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @abc.abstractmethod
    def score(self, records: Sequence[Record]) -> np.ndarray:
        """One float64 value per record (NaN only where the indicator documents it)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"
