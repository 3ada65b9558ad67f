"""instructmining: learn which instruction-tuning data is worth training on.

The namespace root holds what every part shares: records and their readers
and writers (`instructmining.records`, `.readers`, `.writers`), errors and
small helpers. Sub-packages: `indicators`, `regression`, `selection`,
`experiments`, `generation`, `cli`.
"""

from __future__ import annotations

if __name__ != "instructmining":  # imported as a bare folder from the repository root
    raise ImportError(
        "This folder is the root of the `instructmining` package; install the project "
        "(pip install -e .) and import `instructmining` instead."
    )

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("instructmining")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"

__all__ = ["__version__"]
