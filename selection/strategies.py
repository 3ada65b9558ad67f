"""Selection strategies: named ways to choose K records from a scored pool, in one registry.

A strategy is one `Strategy` subclass registered under its `key`; `parse` is the
only place names are read. The grammar::

    NAME                 rule, rule-in-range, random, longest, kcenter, or a plugin's
    NAME:ARG             a parameterised strategy: top:IND, bottom:IND (IND an indicator)
    SPEC+diverse:COS     SPEC re-ranked by the score-first diversity pass: walk its
                         order and skip a record whose cosine similarity to one
                         already kept exceeds COS (DEITA's threshold), e.g. rule+diverse:0.9

Plugins add strategies through the entry-point group ``instructmining.strategies``:
``key = "module:Class"``, a Strategy subclass whose `key` is the entry point's name.

Every ordering is a function of the records' content (their ids), never of their
position, so permuting the input permutes the selection and nothing else.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

import numpy as np

from instructmining.errors import InstructMiningError, ParameterError
from instructmining.neighbours import squared_distances
from instructmining.records import Record
from instructmining.regression import Rule

ENTRY_POINT_GROUP = "instructmining.strategies"
#: the re-ranking step of the grammar: SPEC+diverse:COS
DIVERSE = "diverse"
#: columns holding the rule's linear predictor (lower is better), in order of preference
PREDICTION_COLUMNS = ("predicted_log_loss", "predicted_loss")
_KEY = re.compile(r"[a-z][a-z0-9_-]*")


# --- orderings ------------------------------------------------------------------------------


def _id_rank(ids: Sequence[str]) -> np.ndarray:
    """Rank of each id (ties between equal ids broken by position)."""
    order = np.argsort(np.array(list(ids), dtype=object), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def order_by_value(values: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """Positions sorted by `values` ascending (NaN last), ties by id."""
    vals = np.asarray(values, dtype=np.float64)
    nan = np.isnan(vals)
    return np.lexsort((_id_rank(ids), np.where(nan, 0.0, vals), nan))


def random_order(ids: Sequence[str], seed: int) -> np.ndarray:
    """A seeded random order that depends on the ids only: hash(seed, id) ascending."""
    keys = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in ids]
    return np.lexsort((_id_rank(ids), np.array(keys, dtype=object)))


def longest_order(records: Sequence[Record]) -> np.ndarray:
    """Longest output (in words) first, ties by record id: the paper's length baseline."""
    words = np.array([len(r.output.split()) for r in records], dtype=np.float64)
    return order_by_value(-words, [r.id for r in records])


# --- the pool a strategy chooses from -------------------------------------------------------


@dataclass
class ScoredPool:
    """What a strategy chooses from: records, their scores (`frame`), the rule and the seed.

    `frame` has an ``id`` column and one row per record: indicator values and,
    when a rule ranks the pool, its prediction (`PREDICTION_COLUMNS`).
    `embedder` gives unit embeddings of a root pool in the knn6 space (computed
    once, on demand); `rows` maps this pool's records to its rows. Strategies
    report counts (e.g. ``rejected_for_diversity``) in `notes`.
    """

    records: Sequence[Record]
    frame: Any
    rule: Rule | None = None
    seed: int = 0
    embedder: Callable[[], np.ndarray] | None = None
    rows: np.ndarray | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    #: a set-level rule indicator's own mean over a subset, by name and root-pool rows
    #: (see `own_value`); None when the rule has none
    own: Callable[[str, np.ndarray], float] | None = None
    #: the rule indicators whose value depends on the set scored (knn6)
    set_level: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        """The record ids, in pool order."""
        return [r.id for r in self.records]

    def values(self, column: str) -> np.ndarray:
        """One score column as floats; ParameterError when the pool was not scored for it."""
        if column not in self.frame.columns:
            raise ParameterError(
                f"the pool has no {column!r} scores; score it with that indicator first"
            )
        return self.frame[column].to_numpy(dtype=np.float64)

    def prediction(self) -> np.ndarray | None:
        """The rule's linear predictor per record (lower is better), None when not scored."""
        for column in PREDICTION_COLUMNS:
            if column in self.frame.columns:
                return self.frame[column].to_numpy(dtype=np.float64)
        return None

    def embeddings(self) -> np.ndarray:
        """Unit embeddings of the records, one row each (the knn6 indicator's space)."""
        if self.embedder is None:
            raise ParameterError("this strategy needs embeddings and the pool has no embedder")
        emb = np.asarray(self.embedder(), dtype=np.float64)
        return emb if self.rows is None else emb[self.rows]

    def subset(self, positions: Sequence[int] | np.ndarray) -> ScoredPool:
        """The pool restricted to `positions` (in that order), sharing the embedder."""
        pos = np.asarray(positions, dtype=np.int64)
        return ScoredPool(
            [self.records[int(i)] for i in pos],
            self.frame.iloc[pos].reset_index(drop=True),
            self.rule,
            self.seed,
            self.embedder,
            pos if self.rows is None else self.rows[pos],
            own=self.own,
            set_level=self.set_level,
        )

    def own_value(self, name: str, positions: Sequence[int] | np.ndarray) -> float:
        """The subset's own mean of set-level indicator `name`: scored within the subset.

        The pool's column holds each record's value within the whole pool (knn6: its
        distance to the k-th neighbour among all records), which a subset of the pool
        does not have: the same records are further apart among fewer of them.
        """
        if self.own is None:
            raise ParameterError(f"no scorer for {name!r} within a subset")
        pos = np.asarray(positions, dtype=np.int64)
        return self.own(name, pos if self.rows is None else self.rows[pos])


def rule_order(pool: ScoredPool) -> np.ndarray:
    """The rule's ranking: lowest prediction first, NaN last, ties by record id."""
    eta = pool.prediction()
    if eta is None:
        raise ParameterError("the pool has no rule prediction; select with a rule")
    return order_by_value(eta, pool.ids)


# --- the strategy type ----------------------------------------------------------------------


class Strategy(ABC):
    """One way of choosing records; subclasses set the class attributes and `choose`.

    `needs_rule`: refuses to run without a rule; `uses_rule`: reads the rule's
    prediction when one is given (the pool is then scored with it); `seeded`: the
    choice depends on the seed; `embeds`: reads the knn6 embeddings; `nested`: its
    choice of K is the first K of its choice of K+1 (a ranking, as the size search
    needs); `rerankable`: `+diverse:COS` may walk its order.
    """

    key: ClassVar[str] = ""
    #: the argument of a parameterised name (``top:IND``), None when it takes none
    metavar: ClassVar[str | None] = None
    #: one line for help, errors and the README table
    summary: ClassVar[str] = ""
    needs_rule: bool = False
    uses_rule: bool = False
    seeded: bool = False
    embeds: bool = False
    nested: bool = True
    rerankable: bool = True

    def __init__(self, arg: str | None = None) -> None:
        if self.metavar is not None and not arg:
            raise ParameterError(
                f"strategy {self.key!r} takes {self.metavar}: write {self.key}:{self.metavar}"
            )
        if self.metavar is None and arg is not None:
            raise ParameterError(f"strategy {self.key!r} takes no ':' argument; write {self.key}")
        self.arg = arg

    @property
    def name(self) -> str:
        """The canonical spelling, as `parse` reads it back."""
        return self.key if self.arg is None else f"{self.key}:{self.arg}"

    @property
    def base(self) -> Strategy:
        """The strategy under any re-ranking (itself here)."""
        return self

    def columns(self) -> tuple[str, ...]:
        """Indicator columns the pool must hold for this strategy (besides the rule's)."""
        return ()

    def check(self, rule: Rule | None) -> None:
        """Refuse, before any work, a rule this strategy cannot use (ParameterError)."""
        if self.needs_rule and rule is None:
            raise ParameterError(
                f"strategy {self.name!r} needs a rule; give one (--rule RULE.json) "
                "or choose a strategy that needs none"
            )

    def seed_matters(self, rule: Rule | None) -> bool:
        """Whether the choice depends on the seed when this rule (or None) is given."""
        return self.seeded

    @abstractmethod
    def choose(self, pool: ScoredPool, k: int | None) -> np.ndarray:
        """Positions in `pool` of the chosen records, best first: `k` of them (all when None)."""

    def ranking(self, pool: ScoredPool, chosen: np.ndarray) -> np.ndarray:
        """Every position of `pool`, best first (the scores' rank column).

        By default the `chosen` positions, then the others by record id.
        """
        taken = np.zeros(len(pool), dtype=bool)
        taken[chosen] = True
        rest = np.flatnonzero(~taken)
        rank = _id_rank(pool.ids)
        return np.concatenate([chosen, rest[np.argsort(rank[rest], kind="stable")]]).astype(
            np.int64
        )

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


class Ranked(Strategy):
    """A strategy that sorts the whole pool; its choice of K is the first K of `order`."""

    @abstractmethod
    def order(self, pool: ScoredPool) -> np.ndarray:
        """Every position of `pool`, best first."""

    def choose(self, pool: ScoredPool, k: int | None) -> np.ndarray:
        order = self.order(pool)
        return order if k is None else order[:k]

    def ranking(self, pool: ScoredPool, chosen: np.ndarray) -> np.ndarray:
        return self.order(pool)


# --- the registry ---------------------------------------------------------------------------

_BUILTIN: dict[str, type[Strategy]] = {}
_PLUGINS: dict[str, type[Strategy]] = {}
_plugins_loaded = False


def _valid(cls: Any) -> str | None:
    """Why `cls` cannot be registered, or None."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        return "is not a selection.strategies.Strategy subclass"
    if not isinstance(cls.key, str) or not _KEY.fullmatch(cls.key) or cls.key == DIVERSE:
        return f"has key {cls.key!r}; use lower-case letters, digits, '-' and '_' (not 'diverse')"
    return None


def _builtin(cls: type[Strategy]) -> type[Strategy]:
    _BUILTIN[cls.key] = cls
    return cls


def register(cls: type[Strategy]) -> type[Strategy]:
    """Add a strategy class under its `key` (what an entry point does); a taken key is refused."""
    problem = _valid(cls)
    if problem is not None:
        raise ValueError(f"{cls!r} {problem}")
    taken = _BUILTIN.get(cls.key) or _PLUGINS.get(cls.key)
    if taken is not None and taken is not cls:
        raise ValueError(f"strategy {cls.key!r} is already registered; choose another key")
    _PLUGINS[cls.key] = cls
    return cls


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        problem = _valid(cls)
        if problem is None and cls.key != ep.name:
            problem = f"has key {cls.key!r}, not the entry point's name"
        if problem is not None:
            raise InstructMiningError(
                f"entry point {ep.name!r} ({ep.value}) of {ENTRY_POINT_GROUP} {problem}; "
                "fix or uninstall that plugin"
            )
        register(cls)


def registered() -> dict[str, type[Strategy]]:
    """Every strategy class by key: the built-in ones, then plugins."""
    _load_plugins()
    return {**_BUILTIN, **_PLUGINS}


def _lookup(key: str) -> type[Strategy] | None:
    found = _BUILTIN.get(key) or _PLUGINS.get(key)
    if found is None and not _plugins_loaded:  # built-in names never scan entry points
        _load_plugins()
        found = _PLUGINS.get(key)
    return found


def choices() -> str:
    """The accepted names, for messages and help."""
    names = [c.key if c.metavar is None else f"{c.key}:{c.metavar}" for c in registered().values()]
    return f"{', '.join(names)} (each may end in +{DIVERSE}:COS)"


def parse(spec: str | Strategy, *, option: str | None = None) -> Strategy:
    """The strategy a name stands for (see the module docstring for the grammar).

    `option` names the parameter in errors (e.g. ``--strategy``). An unknown name
    is a ParameterError listing the known ones.
    """
    if isinstance(spec, Strategy):
        return spec
    where = f"{option}: " if option else ""
    text = str(spec).strip()
    head, *steps = text.split("+")
    key, sep, arg = head.partition(":")
    cls = _lookup(key) if key else None
    if cls is None:
        raise ParameterError(f"{where}unknown strategy {text!r}; choose from {choices()}")
    try:
        strategy = cls(arg) if sep else cls()
        for step in steps:
            kind, colon, value = step.partition(":")
            if kind != DIVERSE or not colon:
                raise ParameterError(
                    f"{text!r}: unknown step {step!r}; the re-ranking step is +{DIVERSE}:COS "
                    f"(e.g. rule+{DIVERSE}:0.9)"
                )
            if isinstance(strategy, Diverse):
                raise ParameterError(f"{text!r}: give +{DIVERSE}:COS once")
            try:
                threshold = float(value)
            except ValueError:
                threshold = float("nan")
            strategy = Diverse(strategy, threshold)
    except ParameterError as exc:
        raise ParameterError(f"{where}{exc}") from None
    return strategy


# --- the built-in strategies ----------------------------------------------------------------


@_builtin
class RuleRanking(Ranked):
    """The rule's ranking: lowest predicted loss first."""

    key = "rule"
    summary = "the rule's top K (lowest predicted loss; ties by record id)"
    needs_rule = True
    uses_rule = True

    def order(self, pool: ScoredPool) -> np.ndarray:
        return rule_order(pool)


def rule_where(rule: Rule) -> str:
    """How errors name a rule: its file, else its name."""
    return rule.source or f"rule {rule.name!r}"


#: repairs of a subset with a set-level ranged indicator, each on the gap measured last
SET_LEVEL_ROUNDS = 8


@_builtin
class RuleInRange(RuleRanking):
    """The rule's ranking with every ranged subset mean kept inside the rule's fitted range."""

    key = "rule-in-range"
    summary = (
        "the rule's ranking, records swapped so every subset mean of a rule indicator "
        "stays inside the rule's fitted range (select --within-range)"
    )
    nested = False
    rerankable = False

    def check(self, rule: Rule | None) -> None:
        super().check(rule)
        from instructmining.selection.ranges import ranged_features

        assert rule is not None
        if not ranged_features(rule):
            raise ParameterError(
                f"strategy {self.name!r} needs the rule's fitted range, and {rule_where(rule)} "
                "records none (a rule fitted by `instructmining fit` records it)"
            )

    def choose(self, pool: ScoredPool, k: int | None) -> np.ndarray:
        from instructmining.selection.ranges import (
            is_outside,
            ranged_features,
            within_range_subset,
        )

        order = self.order(pool)
        if k is None:
            return order
        rule = pool.rule
        if rule is None:
            raise ParameterError(f"strategy {self.name!r} needs a rule")
        names = ranged_features(rule)
        values = pool.frame[names].to_numpy(dtype=np.float64)
        lower = np.array([rule.ranges[name]["min"] for name in names], dtype=np.float64)
        upper = np.array([rule.ranges[name]["max"] for name in names], dtype=np.float64)
        shifted = [g for g, name in enumerate(names) if name in pool.set_level]
        chosen, swaps = order[:k], 0
        # A set-level indicator's range holds subsets' own values, the pool's column values
        # within the whole pool: the bounds move by their gap on the current subset, and
        # the repair is redone until its own value is inside (or the rounds run out).
        for _ in range(SET_LEVEL_ROUNDS if shifted else 1):
            low, high = lower.copy(), upper.copy()
            for g in shifted:
                gap = np.nanmean(values[chosen, g]) - pool.own_value(names[g], chosen)
                low[g], high[g] = lower[g] + gap, upper[g] + gap
            chosen, done = within_range_subset(order, values, list(low), list(high), k, names)
            swaps += done
            if all(
                not is_outside(pool.own_value(names[g], chosen), lower[g], upper[g])
                for g in shifted
            ):
                break
        pool.notes["range_swaps"] = swaps
        return chosen


@_builtin
class Random(Ranked):
    """K records drawn with the seed (a hash of seed and record id)."""

    key = "random"
    summary = "K records drawn with the seed"
    seeded = True

    def order(self, pool: ScoredPool) -> np.ndarray:
        return random_order(pool.ids, pool.seed)


@_builtin
class Longest(Ranked):
    """The longest outputs first: the paper's length baseline."""

    key = "longest"
    summary = "the K longest outputs (in words)"

    def order(self, pool: ScoredPool) -> np.ndarray:
        return longest_order(pool.records)


class ByIndicator(Ranked):
    """Records sorted by one indicator (ties by record id, missing values last)."""

    metavar = "IND"
    highest: ClassVar[bool] = True

    def __init__(self, arg: str | None = None) -> None:
        super().__init__(arg)
        if not str(arg).isidentifier():
            raise ParameterError(
                f"strategy {self.key}:{arg}: {arg!r} is not an indicator name (e.g. {self.key}:ifd)"
            )

    def columns(self) -> tuple[str, ...]:
        return (str(self.arg),)

    def order(self, pool: ScoredPool) -> np.ndarray:
        values = pool.values(str(self.arg))
        return order_by_value(-values if self.highest else values, pool.ids)


@_builtin
class Top(ByIndicator):
    key = "top"
    summary = "the K highest values of indicator IND (top:ifd is Cherry LLM's selection)"


@_builtin
class Bottom(ByIndicator):
    key = "bottom"
    summary = "the K lowest values of indicator IND"
    highest = False


@_builtin
class KCenter(Strategy):
    """k-center greedy: each next record is the one farthest from those chosen (coverage).

    Distances are Euclidean in the knn6 indicator's embedding space. The first
    record is the rule's best when the pool has a rule prediction, else the first
    in the seeded random order; ties go to the lowest record id. Choosing K costs
    O(n K d); the whole pool (K None, as under +diverse) O(n^2 d). Distances come
    from `instructmining.neighbours` (exact: a farthest-point walk needs every one).
    """

    key = "kcenter"
    summary = (
        "k-center greedy coverage in the knn6 embedding space: start from the rule's best "
        "record (else a seeded random one), add the record farthest from those chosen"
    )
    uses_rule = True
    seeded = True
    embeds = True

    def seed_matters(self, rule: Rule | None) -> bool:
        return rule is None

    def choose(self, pool: ScoredPool, k: int | None) -> np.ndarray:
        n = len(pool)
        k = n if k is None else min(k, n)
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        emb = pool.embeddings()
        rank = _id_rank(pool.ids)
        eta = pool.prediction()
        first = order_by_value(eta, pool.ids)[0] if eta is not None else None
        start = int(first) if first is not None else int(random_order(pool.ids, pool.seed)[0])
        sq = np.einsum("ij,ij->i", emb, emb)
        nearest = np.full(n, np.inf)  # squared distance to the closest chosen record
        chosen = [start]
        for _ in range(k - 1):
            last = chosen[-1]
            d2 = squared_distances(emb, sq, last)
            np.minimum(nearest, d2, out=nearest)
            nearest[chosen] = -np.inf
            far = nearest.max()
            ties = np.flatnonzero(nearest == far)
            chosen.append(int(ties[np.argmin(rank[ties])]))
        return np.array(chosen, dtype=np.int64)


class Diverse(Strategy):
    """A re-ranking over any strategy: walk its order, skip records too similar to a kept one.

    A record is kept only if its cosine similarity to every kept record is at
    most `threshold` (DEITA's score-first, diversity-aware selection), in the
    knn6 indicator's embedding space. Its ranking (the rank column) is the
    underlying strategy's.
    """

    key = DIVERSE
    embeds = True

    def __init__(self, base: Strategy, threshold: float) -> None:
        if not base.rerankable:
            raise ParameterError(
                f"strategy {base.name!r} chooses a set, not an order, and does not combine "
                f"with +{DIVERSE}:COS (the diversity threshold)"
            )
        if isinstance(threshold, bool) or not 0.0 < float(threshold) <= 1.0:
            raise ParameterError(
                f"the diversity threshold COS of +{DIVERSE}:COS must be a cosine in (0, 1], "
                f"e.g. {base.name}+{DIVERSE}:0.9; got {threshold!r}"
            )
        self.arg = None
        self._base = base
        self.threshold = float(threshold)
        self.needs_rule = base.needs_rule
        self.uses_rule = base.uses_rule
        self.seeded = base.seeded
        self.nested = base.nested

    @property
    def name(self) -> str:
        return f"{self._base.name}+{DIVERSE}:{self.threshold:g}"

    @property
    def base(self) -> Strategy:
        return self._base

    def columns(self) -> tuple[str, ...]:
        return self._base.columns()

    def check(self, rule: Rule | None) -> None:
        self._base.check(rule)

    def seed_matters(self, rule: Rule | None) -> bool:
        return self._base.seed_matters(rule)

    def choose(self, pool: ScoredPool, k: int | None) -> np.ndarray:
        from instructmining.selection.diversity import diverse_prefix

        order = self._base.choose(pool, None)
        pool.notes["base_ranking"] = self._base.ranking(pool, order)
        kept, rejected = diverse_prefix(order, pool.embeddings(), self.threshold, k)
        pool.notes["rejected_for_diversity"] = rejected
        if k is not None and len(kept) < k:
            warnings.warn(
                f"the diversity threshold {self.threshold:g} leaves only {len(kept)} of the "
                f"{k} records asked for",
                stacklevel=3,
            )
        return kept

    def ranking(self, pool: ScoredPool, chosen: np.ndarray) -> np.ndarray:
        found = pool.notes.get("base_ranking")
        if found is not None:
            return np.asarray(found, dtype=np.int64)
        return self._base.ranking(pool, np.empty(0, dtype=np.int64))


def checked_choice(strategy: Strategy, positions: Any, n: int, k: int | None) -> np.ndarray:
    """`positions` as int64 after checking a strategy's answer (a plugin's may be wrong)."""
    out = np.asarray(positions, dtype=np.int64).reshape(-1)
    outside = bool(len(out)) and bool(out.min() < 0 or out.max() >= n)
    if outside or len(np.unique(out)) != len(out) or (k is not None and len(out) > k):
        raise InstructMiningError(
            f"strategy {strategy.name!r} returned {len(out)} positions that are not distinct "
            f"positions of the {n}-record pool (at most {k if k is not None else n}); fix it"
        )
    return out
