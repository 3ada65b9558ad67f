"""Find the records of a pool that overlap an evaluation set (test-set contamination).

Three kinds of match, each on two texts of a record: the prompt (instruction +
input) and the full example (prompt + output), compared with the same text of
every eval item after `textnorm.normalize` (NFKC, case-folded, punctuation and
spacing collapsed):

- ``exact``: equal normalised texts.
- ``ngram``: the record shares at least `min_shared` word n-grams (13 by default,
  as in GPT-3's and later decontamination studies) with the eval item (all of
  them, when the item has fewer than `min_shared`). An eval
  text shorter than n words but at least `min_words` long counts as one n-gram of
  its own length, so a short eval prompt copied into a record is found; shorter
  texts are left to the other two kinds. Score: the share of the eval item's
  n-grams found in the record.
- ``near``: Jaccard similarity of word `shingle`-gram sets at least `jaccard`
  (0.4 over 5-grams by default; docs/curation.md gives the measurements that
  chose it), candidates proposed by MinHash LSH and confirmed exactly
  (`minhash`). Score: the Jaccard similarity.

The one exact-prompt rule also serves the study, which drops source records
whose prompt occurs in D_eval (`remove_prompt_overlap`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instructmining.errors import ParameterError
from instructmining.evalsets import EvalSet, build_eval_set
from instructmining.records import Record
from instructmining.selection import minhash
from instructmining.selection.textnorm import FIELDS, field_text, ngrams, normalize, shingles

KINDS = ("exact", "ngram", "near")


@dataclass(frozen=True)
class ContaminationSettings:
    """How records are compared with eval items (see the module docstring)."""

    ngram: int = 13
    min_shared: int = 1
    min_words: int = 8
    jaccard: float = 0.4
    shingle: int = 5
    num_perm: int = minhash.NUM_PERM
    fields: tuple[str, ...] = FIELDS
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        for name, flag in (
            ("ngram", "--ngram"),
            ("min_shared", "--min-shared"),
            ("min_words", "min_words"),
            ("shingle", "--shingle"),
            ("num_perm", "num_perm"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{flag} must be a whole number >= 1; got {value!r}")
        if isinstance(self.jaccard, bool) or not 0.0 < float(self.jaccard) <= 1.0:
            raise ParameterError(f"--jaccard must be in (0, 1]; got {self.jaccard!r}")
        for value, allowed, flag in ((self.fields, FIELDS, "fields"), (self.kinds, KINDS, "kinds")):
            bad = [v for v in value if v not in allowed]
            if bad or not value:
                raise ParameterError(
                    f"{flag} must be one or more of {', '.join(allowed)}; got {list(value)!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (recorded beside results)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Match:
    """One pool record overlapping one eval item, by one kind of match, on one text."""

    pool_index: int
    pool_id: str
    eval_index: int
    eval_id: str
    eval_source: str
    kind: str
    field: str
    score: float
    shared: int | None = None  # n-grams shared (ngram matches only)

    def to_row(self) -> dict[str, Any]:
        """A report row (`pool_row` counts records of DATA from 1)."""
        return {
            "pool_id": self.pool_id,
            "pool_row": self.pool_index + 1,
            "eval_id": self.eval_id,
            "eval_file": self.eval_source,
            "kind": self.kind,
            "field": self.field,
            "score": round(self.score, 6),
            "shared_ngrams": self.shared,
        }


@dataclass
class ContaminationReport:
    """Every match found, with the sizes and settings of the comparison."""

    matches: list[Match]
    n_pool: int
    n_eval: int
    eval_sources: list[str]
    settings: ContaminationSettings
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def contaminated(self) -> list[int]:
        """Positions of the pool records with at least one match, ascending."""
        return sorted({m.pool_index for m in self.matches})

    def summary(self) -> dict[str, Any]:
        """Counts of flagged pool records (and eval items hit) per kind and per eval source."""
        by_kind: dict[str, set[int]] = {k: set() for k in self.settings.kinds}
        by_source: dict[str, dict[str, set[int]]] = {
            s: {k: set() for k in self.settings.kinds} for s in dict.fromkeys(self.eval_sources)
        }
        items: dict[str, set[int]] = defaultdict(set)
        for m in self.matches:
            by_kind[m.kind].add(m.pool_index)
            by_source[m.eval_source][m.kind].add(m.pool_index)
            items[m.eval_source].add(m.eval_index)
        return {
            "pool": self.n_pool,
            "eval": self.n_eval,
            "contaminated": len(self.contaminated),
            "by_kind": {k: len(v) for k, v in by_kind.items()},
            "by_eval": {
                s: {
                    "eval_items": self.parts.get(s, 0),
                    "eval_items_matched": len(items[s]),
                    **{k: len(v) for k, v in kinds.items()},
                }
                for s, kinds in by_source.items()
            },
            "settings": self.settings.to_dict(),
        }


class EvalIndex:
    """Eval items indexed for the three kinds of match; queried one pool record at a time."""

    def __init__(
        self,
        records: Sequence[Record],
        sources: Sequence[str] | None = None,
        settings: ContaminationSettings | None = None,
    ) -> None:
        self.records = list(records)
        self.sources = list(sources) if sources is not None else ["eval"] * len(self.records)
        if len(self.sources) != len(self.records):
            raise ValueError(f"{len(self.records)} eval records but {len(self.sources)} sources")
        self.settings = s = settings or ContaminationSettings()
        self._exact: dict[str, dict[str, list[int]]] = {f: defaultdict(list) for f in s.fields}
        # per field: n-gram -> eval items holding it; for eval texts shorter than n words,
        # their first min_words-gram -> (item, whole text), confirmed against the record
        self._grams: dict[str, dict[tuple[str, ...], list[int]]] = {
            f: defaultdict(list) for f in s.fields
        }
        self._short: dict[str, dict[tuple[str, ...], list[tuple[int, tuple[str, ...]]]]] = {
            f: defaultdict(list) for f in s.fields
        }
        self._k = min(s.min_words, s.ngram)
        self._n_grams: dict[str, list[int]] = {f: [] for f in s.fields}
        self._shingles: dict[str, list[set[str]]] = {f: [] for f in s.fields}
        self._lsh: dict[str, Any] = {}
        self._sketcher = minhash.Sketcher(s.num_perm) if "near" in s.kinds else None
        for f in s.fields:
            texts = [normalize(field_text(r, f)) for r in self.records]
            for j, text in enumerate(texts):
                tokens = text.split()
                if text:
                    self._exact[f][text].append(j)
                if len(tokens) >= s.ngram:
                    grams = ngrams(tokens, s.ngram)
                    for g in grams:
                        self._grams[f][g].append(j)
                    self._n_grams[f].append(len(grams))
                elif len(tokens) >= self._k:
                    self._short[f][tuple(tokens[: self._k])].append((j, tuple(tokens)))
                    self._n_grams[f].append(1)
                else:
                    self._n_grams[f].append(0)
                self._shingles[f].append(shingles(tokens, s.shingle))
            if self._sketcher is not None:
                lsh = minhash.lsh_index(s.jaccard, s.num_perm)
                sets = self._shingles[f]
                for j, sketch in enumerate(self._sketcher.sketches(sets)):
                    if sets[j]:
                        lsh.insert(j, sketch)
                self._lsh[f] = lsh

    def query(self, record: Record, index: int = 0) -> list[Match]:
        """Every match of one pool record (`index`: its position, kept in the matches)."""
        s = self.settings
        out: list[Match] = []

        def add(j: int, kind: str, f: str, score: float, shared: int | None = None) -> None:
            out.append(
                Match(
                    index, record.id, j, self.records[j].id, self.sources[j], kind, f, score, shared
                )
            )

        for f in s.fields:
            text = normalize(field_text(record, f))
            if not text:
                continue
            tokens = text.split()
            if "exact" in s.kinds:
                for j in self._exact[f].get(text, ()):
                    add(j, "exact", f, 1.0)
            if "ngram" in s.kinds:
                counts: dict[int, int] = defaultdict(int)
                table, short = self._grams[f], self._short[f]
                mine = ngrams(tokens, s.ngram)
                for g in mine & table.keys():
                    for j in table[g]:
                        counts[j] += 1
                if short:
                    heads = mine if self._k == s.ngram else ngrams(tokens, self._k)
                    for head in heads & short.keys():
                        for j, whole in short[head]:
                            if _contains(tokens, whole):
                                counts[j] = 1
                for j, shared in sorted(counts.items()):
                    total = self._n_grams[f][j]
                    if shared >= min(s.min_shared, total):
                        add(j, "ngram", f, shared / total, shared)
            if self._sketcher is not None:
                parts = shingles(tokens, s.shingle)
                sketch = self._sketcher.sketch(parts)
                for j in sorted(self._lsh[f].query(sketch)):
                    theirs = self._shingles[f][j]
                    score = len(parts & theirs) / len(parts | theirs)
                    if score >= s.jaccard:
                        add(j, "near", f, score)
        return out


def _contains(tokens: list[str], whole: tuple[str, ...]) -> bool:
    """Whether `whole` occurs in `tokens` as a run of consecutive words."""
    m = len(whole)
    return any(
        tokens[p] == whole[0] and tuple(tokens[p : p + m]) == whole
        for p in range(len(tokens) - m + 1)
    )


def find_contamination(
    pool: Sequence[Record],
    eval_records: Sequence[Record],
    eval_sources: Sequence[str] | None = None,
    settings: ContaminationSettings | None = None,
    *,
    parts: Mapping[str, int] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ContaminationReport:
    """Compare every pool record with every eval item; see the module docstring.

    `eval_sources[j]` labels eval item j (its file) for the per-source summary;
    `on_progress(n)` is called as records are done (a progress bar's update).
    """
    index = EvalIndex(eval_records, eval_sources, settings)
    matches: list[Match] = []
    step = 0
    for i, record in enumerate(pool):
        matches.extend(index.query(record, i))
        step += 1
        if on_progress is not None and step == 256:
            on_progress(step)
            step = 0
    if on_progress is not None and step:
        on_progress(step)
    counts = dict(parts) if parts is not None else dict(_count(index.sources))
    return ContaminationReport(
        matches, len(pool), len(index.records), index.sources, index.settings, counts
    )


def _count(labels: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for label in labels:
        out[label] += 1
    return out


def prompt_key(record: Record) -> str:
    """The normalised prompt: two records with equal keys pose the same task (exact match)."""
    return normalize(record.prompt)


def remove_prompt_overlap(
    sources: Mapping[str, Sequence[Record]], eval_records: Sequence[Record]
) -> tuple[dict[str, list[Record]], dict[str, int]]:
    """Drop source records whose prompt exactly matches a D_eval prompt; counts per source.

    The exact-prompt kind of `find_contamination`, kept as a fast set look-up for
    the study's pool.
    """
    prompts = {k for k in map(prompt_key, eval_records) if k}
    kept: dict[str, list[Record]] = {}
    removed: dict[str, int] = {}
    for name, recs in sources.items():
        keep = [r for r in recs if prompt_key(r) not in prompts]
        kept[name] = keep
        removed[name] = len(recs) - len(keep)
    return kept, removed


def read_eval_files(paths: Sequence[str | Path], *, option: str = "--eval") -> EvalSet:
    """The eval items of `paths` (any layout `evalsets` reads; Vicuna answers optional).

    A missing file is a ParameterError naming `option`, before anything is read.
    """
    if not paths:
        raise ParameterError(f"{option}: give at least one evaluation file")
    for p in map(Path, paths):
        if not p.exists():
            raise ParameterError(
                f"{option} {p}: no such file or folder; give an existing evaluation file"
            )
    return build_eval_set(paths, answers_required=False)
