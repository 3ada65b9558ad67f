"""Progress bars on stderr, shown only to a person watching a terminal."""

from __future__ import annotations

import sys
from typing import Any


def progress_enabled(quiet: bool = False) -> bool:
    """True when stderr is a terminal and the user did not ask for quiet."""
    return not quiet and sys.stderr.isatty()


def progress_bar(total: int | None, desc: str, *, enabled: bool, unit: str = "rec") -> Any:
    """A tqdm bar with rate and ETA on stderr; a no-op bar when disabled."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
