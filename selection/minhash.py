"""MinHash sketches and an LSH index (datasketch) for near matches on word shingles.

LSH only proposes candidate pairs; callers confirm each with the exact Jaccard
similarity of the shingle sets, so a reported score is exact and the sketches'
randomness can only cost a rare missed pair near the threshold, never a false one.
The index is queried at 0.8 x the threshold to make such misses rarer still.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from instructmining.errors import MissingPackageError

NUM_PERM = 128
SEED = 1
CANDIDATE_FACTOR = 0.8  # LSH proposes pairs from this fraction of the threshold up


def _datasketch() -> Any:
    try:
        import datasketch
    except ImportError as exc:  # pragma: no cover - part of the curation extra
        raise MissingPackageError(
            "near-match checks need datasketch: pip install 'instructmining[curation]'"
        ) from exc
    return datasketch


class Sketcher:
    """Makes MinHash sketches that share one set of seeded permutations (deterministic)."""

    def __init__(self, num_perm: int = NUM_PERM) -> None:
        self._template = _datasketch().MinHash(num_perm=num_perm, seed=SEED)

    def sketch(self, shingles: set[str]) -> Any:
        """The MinHash of one shingle set."""
        m = self._template.copy()
        m.update_batch([s.encode("utf-8") for s in sorted(shingles)])
        return m

    def sketches(self, sets: Iterable[set[str]]) -> Iterator[Any]:
        """The MinHash of each shingle set, in order."""
        return map(self.sketch, sets)


def lsh_index(threshold: float, num_perm: int = NUM_PERM) -> Any:
    """An empty MinHashLSH proposing pairs whose estimated Jaccard is near `threshold` or above."""
    ds = _datasketch()
    return ds.MinHashLSH(threshold=max(0.01, CANDIDATE_FACTOR * threshold), num_perm=num_perm)
