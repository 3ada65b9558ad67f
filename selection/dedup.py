"""Exact and near-duplicate clusters within a pool, and which record of each cluster to keep.

Two records are linked when their full texts (instruction, input, output) are
equal after `textnorm.normalize` (``exact``), when the Jaccard similarity of
their word `shingle`-gram sets is at least `jaccard` and that of their outputs
alone at least `output_jaccard` (``near``: MinHash LSH proposes pairs, each
confirmed exactly; the second test keeps apart records that share a long
context but ask and answer different things, as dolly's several questions
about one passage do), or, when `semantic` is set, when the
cosine similarity of their embeddings is at least `semantic` (``semantic``; the
knn6 indicator's embedding space, see `knn6_embeddings`; pairs found by
`instructmining.neighbours.pairs_within`, exact at every size). Clusters are the
connected components of the links, so a chain of near copies is one cluster.

Which record a cluster keeps is decided by `keepers`: the first in a given order
(the rule's ranking, best first) or else the lowest id, so the choice never
depends on the order the pool was read in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from instructmining.errors import ParameterError
from instructmining.neighbours import pairs_within
from instructmining.records import Record
from instructmining.selection import minhash
from instructmining.selection.textnorm import field_text, normalize, shingles

LINK_KINDS = ("exact", "near", "semantic")


@dataclass(frozen=True)
class DedupSettings:
    """Thresholds of the duplicate links (see the module docstring)."""

    jaccard: float = 0.5
    output_jaccard: float = 0.3
    shingle: int = 5
    num_perm: int = minhash.NUM_PERM
    semantic: float | None = None

    def __post_init__(self) -> None:
        for name, flag in (("shingle", "--shingle"), ("num_perm", "num_perm")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{flag} must be a whole number >= 1; got {value!r}")
        if isinstance(self.jaccard, bool) or not 0.0 < float(self.jaccard) <= 1.0:
            raise ParameterError(f"--dedup-jaccard must be in (0, 1]; got {self.jaccard!r}")
        if isinstance(self.output_jaccard, bool) or not 0.0 <= float(self.output_jaccard) <= 1.0:
            raise ParameterError(f"output_jaccard must be in [0, 1]; got {self.output_jaccard!r}")
        if self.semantic is not None and not -1.0 <= float(self.semantic) <= 1.0:
            raise ParameterError(f"--semantic must be a cosine in [-1, 1]; got {self.semantic!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values."""
        return asdict(self)


@dataclass(frozen=True)
class Link:
    """Two records found to be duplicates: positions in the pool, kind and similarity."""

    a: int
    b: int
    kind: str
    score: float


@dataclass
class DuplicateReport:
    """Clusters of duplicates (positions, each cluster sorted by record id) and their links."""

    clusters: list[list[int]]
    links: list[Link]
    n_records: int
    settings: DedupSettings

    @property
    def n_duplicates(self) -> int:
        """Records that keeping one per cluster drops."""
        return sum(len(c) - 1 for c in self.clusters)

    def cluster_kinds(self) -> list[list[str]]:
        """The kinds of link inside each cluster, in LINK_KINDS order."""
        where = {i: c for c, members in enumerate(self.clusters) for i in members}
        kinds: list[set[str]] = [set() for _ in self.clusters]
        for link in self.links:
            kinds[where[link.a]].add(link.kind)
        return [[k for k in LINK_KINDS if k in found] for found in kinds]

    def summary(self) -> dict[str, Any]:
        """Counts: clusters, records in them, records dropped by keeping one, per link kind."""
        by_kind: dict[str, int] = defaultdict(int)
        for kinds in self.cluster_kinds():
            for k in kinds:
                by_kind[k] += 1
        return {
            "records": self.n_records,
            "clusters": len(self.clusters),
            "records_in_clusters": sum(map(len, self.clusters)),
            "duplicates": self.n_duplicates,
            "clusters_by_link": {k: by_kind.get(k, 0) for k in LINK_KINDS},
            "settings": self.settings.to_dict(),
        }


class _Components:
    """Union-find over positions."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(
    records: Sequence[Record],
    settings: DedupSettings | None = None,
    *,
    embeddings: np.ndarray | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DuplicateReport:
    """Link duplicate records and group them into clusters (see the module docstring).

    `embeddings` (unit rows indexed like `records`) are needed when
    `settings.semantic` is set. Only one record of each exact group is compared
    by MinHash and embeddings: its copies share every link it has.
    """
    s = settings or DedupSettings()
    n = len(records)
    if s.semantic is not None and (embeddings is None or len(embeddings) != n):
        raise ParameterError("--semantic needs an embedding of every record")
    texts = [normalize(field_text(r, "full")) for r in records]
    ids = [r.id for r in records]
    by_id = sorted(range(n), key=lambda i: (ids[i], i))
    groups: dict[str, list[int]] = defaultdict(list)
    for i in by_id:
        groups[texts[i]].append(i)
    links: list[Link] = []
    comps = _Components(n)
    reps: list[int] = []
    for members in groups.values():
        reps.append(members[0])
        for other in members[1:]:
            links.append(Link(members[0], other, "exact", 1.0))
            comps.union(members[0], other)
    reps.sort(key=lambda i: (ids[i], i))

    sketcher = minhash.Sketcher(s.num_perm)
    lsh = minhash.lsh_index(s.jaccard, s.num_perm)
    sets: dict[int, set[str]] = {}
    outputs: dict[int, set[str]] = {}
    done = 0
    for i in reps:
        sets[i] = mine = shingles(texts[i].split(), s.shingle)
        outputs[i] = said = shingles(normalize(records[i].output).split(), s.shingle)
        if mine:
            sketch = sketcher.sketch(mine)
            for j in sorted(lsh.query(sketch)):
                theirs = sets[j]
                score = len(mine & theirs) / len(mine | theirs)
                if score >= s.jaccard and _similar(said, outputs[j], s.output_jaccard):
                    links.append(Link(j, i, "near", score))
                    comps.union(i, j)
            lsh.insert(i, sketch)
        done += 1
        if on_progress is not None and done == 256:
            on_progress(done)
            done = 0
    if on_progress is not None:
        on_progress(done + n - len(reps))  # copies of an exact group count as done

    if s.semantic is not None:
        assert embeddings is not None
        for a, b, score in pairs_within(np.asarray(embeddings, dtype=np.float64)[reps], s.semantic):
            i, j = reps[a], reps[b]
            links.append(Link(i, j, "semantic", score))
            comps.union(i, j)

    clusters_by_root: dict[int, list[int]] = defaultdict(list)
    for i in by_id:
        clusters_by_root[comps.find(i)].append(i)
    clusters = [c for c in clusters_by_root.values() if len(c) > 1]
    clusters.sort(key=lambda c: (ids[c[0]], c[0]))
    return DuplicateReport(clusters, links, n, s)


def _similar(a: set[str], b: set[str], threshold: float) -> bool:
    """Jaccard(a, b) >= threshold, two empty sets (no outputs) counting as equal."""
    if not a and not b:
        return True
    return len(a & b) >= threshold * len(a | b)


def keepers(
    clusters: Sequence[Sequence[int]],
    records: Sequence[Record],
    order: Sequence[int] | np.ndarray | None = None,
) -> dict[int, int]:
    """Dropped position -> kept position, keeping one record per cluster.

    The kept record is the cluster's first in `order` (positions, best first: the
    rule's ranking) when given, else the one with the lowest id.
    """
    if order is not None:
        rank = {int(i): r for r, i in enumerate(order)}
        big = len(rank)
        key: Callable[[int], Any] = lambda i: (rank.get(i, big), records[i].id, i)  # noqa: E731
    else:
        key = lambda i: (records[i].id, i)  # noqa: E731
    dropped: dict[int, int] = {}
    for members in clusters:
        keep = min(members, key=key)
        for i in members:
            if i != keep:
                dropped[i] = keep
    return dropped


def knn6_embeddings(
    records: Sequence[Record],
    *,
    profile: str | None = None,
    models: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Unit embeddings of the records in the space of `profile`'s knn6 indicator.

    `profile` defaults to the default profile; `models` ("knn6" -> checkpoint)
    overrides its embedder. The space is fitted on `records` for TF-IDF + SVD.
    """
    from instructmining.indicators import profiles
    from instructmining.indicators.knn import KNN

    try:
        plan = profiles.build(profile, names=["knn6"], models=dict(models or {}))
    except KeyError as exc:
        raise ParameterError(f"--profile/--model: {exc.args[0]}") from None
    knn = plan.indicators[0]
    if not isinstance(knn, KNN):
        raise ParameterError("--semantic needs the built-in knn6 indicator's embeddings")
    return np.asarray(knn.embed(records), dtype=np.float64)
