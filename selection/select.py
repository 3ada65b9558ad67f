"""Select the records a Rule predicts to lower the finetuned model's loss most.

The rule is linear in the indicators, so the predicted log loss of a subset is
the mean of its records' linear predictors: ranking records by that value and
taking a prefix minimises the predicted loss of a subset of that size.

Dataset-level indicators (``knn6``) are computed once against the whole pool:
a record's distance to its k-th neighbour among all candidates is a property
of the record within the data it is drawn from, and keeps the ranking a plain
sort (reproducible, a prefix for every size). The subset's own ``knn6`` differs
(the same records lie further apart among fewer of them); a rule's fitted range
holds candidates' own values, so the range check and ``within_range`` use the
subset's own value (`ScoredPool.own_value`). ``--diversity`` is the tool for
controlling redundancy inside the subset.

The rule only knows the span of mean indicator values it was fitted on
(`Rule.ranges`). After choosing, every rule indicator's subset mean is checked
against that span, with a FittedRangeWarning for each one outside;
``within_range`` chooses a subset that stays inside (see `ranges.within_range_subset`).
Like ``diversity`` it is a constraint on how the subset is taken from the rule's
ordering, not an ordering of its own: the option and the strategy ``rule-in-range``
are the same thing, as ``diversity`` and ``+diverse:COS`` are. Which records a
strategy picks is the strategy's business (`strategies`); this module scores the
pool for it, drops duplicates, and reports.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import InputError, InstructMiningError, ParameterError
from instructmining.indicators.base import Indicator
from instructmining.indicators.engine import score
from instructmining.indicators.executors import Executor
from instructmining.indicators.knn import KNN
from instructmining.indicators.registry import from_params
from instructmining.indicators.spec import check_backend, check_params
from instructmining.records import Record
from instructmining.regression import Rule
from instructmining.selection.dedup import DedupSettings, find_duplicates, keepers
from instructmining.selection.ranges import (
    FittedRangeWarning,
    check_messages,
    check_subset,
    ranged_features,
)
from instructmining.selection.strategies import (
    Diverse,
    RuleInRange,
    ScoredPool,
    Strategy,
    checked_choice,
    parse,
    rule_order,
    rule_where,
)


class MissingIndicatorError(InstructMiningError):
    """The rule needs an indicator this environment cannot compute."""


@dataclass
class Selection:
    """The chosen records (positions into the pool, best first) and every record's scores."""

    indices: np.ndarray
    scores: (
        Any  # DataFrame: id, indicator columns, predicted_log_loss, predicted_loss, rank, selected
    )
    strategy: str
    settings: dict[str, Any] = field(default_factory=dict)
    rejected_for_diversity: int = 0
    #: per ranged rule indicator: subset_mean, the rule's min/mean/max, inside (see ranges.py)
    range_check: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: one line per indicator whose subset mean lies outside the rule's fitted range
    range_warnings: list[str] = field(default_factory=list)
    #: swaps made by within-range selection
    range_swaps: int = 0
    #: records left out as duplicates of a kept one (dedup), and their clusters
    duplicates_dropped: int = 0
    duplicate_clusters: int = 0
    #: settings (`params()`) of the indicators a strategy scored its columns with (top:IND)
    column_indicators: dict[str, dict[str, Any]] = field(default_factory=dict)

    def subset(self, records: Sequence[Record]) -> list[Record]:
        """The selected records, in selection order."""
        return [records[i] for i in self.indices]


def rule_settings(rule: Rule) -> dict[str, dict[str, Any]]:
    """The checked constructor settings of every indicator the rule uses, by name.

    The rule's stored settings are data: they go through `indicators.spec`, which
    refuses `trust_remote_code`, unknown settings, bad values and a code version
    other than this installation's, naming the rule file. An indicator that is not
    registered here is a MissingIndicatorError.
    """
    from instructmining.indicators.registry import registered

    missing = [name for name in rule.features if name not in registered()]
    if missing:
        raise MissingIndicatorError(
            f"the rule {rule.name!r} needs indicator {missing[0]!r}, which is not registered "
            f"here (registered: {', '.join(sorted(registered()))}); install the plugin that "
            "provides it"
        )
    where = rule_where(rule)
    return {
        name: check_params(rule.indicators.get(name) or {"name": name}, source=where, name=name)[1]
        for name in rule.features
    }


def check_within_range(rule: Rule | None, *, strategy: str = "rule") -> None:
    """Refuse within-range selection without the rule strategy or a rule with a fitted range."""
    if strategy != "rule" or rule is None:
        raise ParameterError("'within_range' works with the rule strategy and needs a rule.")
    if not ranged_features(rule):
        raise ParameterError(
            f"'within_range' needs the rule's fitted range, and {rule_where(rule)} records "
            "none (a rule fitted by `instructmining fit` records it)."
        )


def resolve_strategy(
    strategy: str | Strategy,
    rule: Rule | None,
    *,
    diversity: float | None = None,
    within_range: bool = False,
) -> tuple[Strategy, Strategy]:
    """(the strategy named, the one that runs): `within_range` and `diversity` applied, checked.

    `within_range` turns ``rule`` into ``rule-in-range``; `diversity` adds the
    ``+diverse:COS`` re-ranking. Refuses, before any work, a strategy that needs a
    rule without one, or a rule without the fitted range ``rule-in-range`` needs.
    """
    named = parse(strategy, option="the 'strategy' parameter")
    chosen = named
    if within_range and not isinstance(named, RuleInRange):
        check_within_range(rule, strategy=named.name)
        if diversity is not None:
            raise ParameterError(
                "'within_range' takes k or fraction and does not combine with 'diversity' "
                "or 'max_predicted_loss'."
            )
        chosen = RuleInRange()
    if diversity is not None:
        if isinstance(chosen, Diverse):
            raise ParameterError(
                f"strategy {named.name!r} has a diversity threshold already; drop 'diversity'"
            )
        chosen = Diverse(chosen, diversity)
    chosen.check(rule)
    return named, chosen


def rule_indicators(
    rule: Rule,
    *,
    models: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
) -> list[Indicator]:
    """Rebuild the indicators a rule was fitted with; `models` overrides checkpoints by name.

    Fails before any work when a needed indicator is not registered, its stored
    settings are refused (see `rule_settings`) or its checkpoint cannot be loaded
    here, naming it and how to provide it.
    """
    from instructmining.indicators import profiles

    stored = rule_settings(rule)
    models = dict(models or {})
    try:
        overridden = set(profiles.expand_models(models))
    except KeyError as exc:
        raise ParameterError(str(exc.args[0])) from None
    unknown = overridden - set(rule.features)
    if unknown:
        raise ParameterError(
            f"--model {', '.join(sorted(unknown))}: the rule {rule.name!r} does not use "
            f"{'it' if len(unknown) == 1 else 'them'} (it uses {', '.join(rule.features)})"
        )
    try:
        plan = profiles.build(
            names=rule.features,
            models=models,
            settings=stored,
            device=device,
            batch_size=batch_size,
        )
    except KeyError as exc:
        raise MissingIndicatorError(
            f"the rule {rule.name!r} needs an indicator that is not registered here "
            f"({exc.args[0]}); install the plugin that provides it"
        ) from None
    except InputError:  # e.g. a checkpoint path given with --model that does not exist
        raise
    except InstructMiningError as exc:
        raise MissingIndicatorError(
            f"the rule {rule.name!r} needs a checkpoint that cannot be loaded here: {exc}"
        ) from None
    for ind in plan.indicators:
        if ind.name not in overridden:  # a checkpoint given on the command line may change it
            check_backend(ind, rule.indicators.get(ind.name) or {}, source=rule_where(rule))
    return plan.indicators


def subset_size(n: int, *, k: int | None, fraction: float | None) -> int | None:
    """The number of records asked for by `k` or `fraction` (None when neither is given)."""
    if k is not None and fraction is not None:
        raise ParameterError("Give only one of 'k' and 'fraction'.")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ParameterError(
                f"The 'k' parameter of select must be an int >= 1. Got {k!r} instead."
            )
        if k > n:
            raise ParameterError(
                f"The 'k' parameter of select ({k}) exceeds the {n} records of the pool."
            )
        return k
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise ParameterError(
                f"The 'fraction' parameter of select must be in (0, 1]. Got {fraction!r} instead."
            )
        return max(1, math.ceil(fraction * n))
    return None


def select(
    records: Sequence[Record],
    rule: Rule | None = None,
    *,
    k: int | None = None,
    fraction: float | None = None,
    max_predicted_loss: float | None = None,
    strategy: str | Strategy = "rule",
    diversity: float | None = None,
    within_range: bool = False,
    dedup: DedupSettings | None = None,
    seed: int = 0,
    indicators: Sequence[Indicator] | None = None,
    score_rule: bool = False,
    models: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    cache: str | Path | None = None,
    progress: bool = False,
    executor: Executor | None = None,
) -> Selection:
    """Rank `records` and keep the best `k` / `fraction` / those under `max_predicted_loss`.

    `strategy` is a name of the strategy registry (`strategies.parse`): "rule" ranks
    by the rule's predicted log loss (lower is better; ties by record id); "random"
    and "longest" are the paper's baselines and need no rule; ``top:IND`` and
    ``bottom:IND`` score IND with the configuration given in `indicators` (a
    study's), else the profile's; "kcenter" covers the knn6 embedding space.
    `diversity` (a cosine threshold; the same as ``+diverse:COS``) rejects a record too
    similar to one already kept, in the embedding space of the rule's ``knn6``
    configuration (TF-IDF + SVD offline), which kcenter and semantic dedup use too.
    `within_range` (rule strategy, with `k` or `fraction`; the same as
    ``rule-in-range``) keeps every subset mean of a rule indicator inside the rule's
    fitted range by swapping records of the top k (`ranges.within_range_subset`);
    RangeInfeasibleError when it finds no such subset.
    `dedup` keeps one record per duplicate cluster (`dedup.find_duplicates`) before
    choosing: the best by the rule with a strategy that needs the rule, else the
    lowest id; `k` and `fraction` count the records left, and the scores'
    `duplicate_of` names the kept record of each dropped one (dropped records rank last).
    The pool is scored with the rule when the strategy uses it, or with `score_rule`.

    With a strategy that needs the rule, each rule indicator whose subset mean lies
    outside the rule's fitted range gives a FittedRangeWarning, also kept in
    `Selection.range_warnings` (`Selection.range_check` has every mean and range).
    """
    import pandas as pd

    named = parse(strategy, option="the 'strategy' parameter")
    n = len(records)
    if n == 0:
        raise ParameterError("The pool is empty: nothing to select from.")
    size = subset_size(n, k=k, fraction=fraction)
    if max_predicted_loss is not None and (size is not None or named.base.key != "rule"):
        raise ParameterError("'max_predicted_loss' works alone, with the rule strategy.")
    if max_predicted_loss is not None and not (
        math.isfinite(max_predicted_loss) and max_predicted_loss > 0
    ):
        raise ParameterError(
            f"--max-predicted-loss must be a positive number (a loss); got {max_predicted_loss!r}"
        )
    if size is None and max_predicted_loss is None:
        raise ParameterError("Say how many records to keep: k, fraction or max_predicted_loss.")
    if within_range and size is None:
        raise ParameterError(
            "'within_range' takes k or fraction and does not combine with 'diversity' "
            "or 'max_predicted_loss'."
        )
    named, chosen_strategy = resolve_strategy(
        named, rule, diversity=diversity, within_range=within_range
    )

    embedded: list[np.ndarray] = []

    def embed() -> np.ndarray:
        if not embedded:
            embedded.append(_embeddings(records, rule, indicators))
        return embedded[0]

    dups = None
    if dedup is not None:
        from instructmining.progress import progress_bar

        with progress_bar(n, "duplicates", enabled=progress) as bar:
            dups = find_duplicates(
                records,
                dedup,
                embeddings=embed() if dedup.semantic is not None else None,
                on_progress=bar.update,
            )
        if size is not None:
            size = subset_size(n - dups.n_duplicates, k=k, fraction=fraction)

    ids = [r.id for r in records]
    frame = pd.DataFrame({"id": ids})
    ranked_by_rule = rule is not None and (chosen_strategy.uses_rule or score_rule)
    own: Callable[[str, np.ndarray], float] | None = None
    set_level: frozenset[str] = frozenset()
    if ranked_by_rule:
        assert rule is not None
        used = _score_rule(
            records, rule, frame, models, device, batch_size, cache, progress, executor
        )
        set_level = frozenset(ind.name for ind in used if ind.set_dependent())
        own = _own_values(records, {ind.name: ind for ind in used}, cache)
    wanted = [c for c in chosen_strategy.columns() if c not in frame.columns]
    built: list[Indicator] = []
    if wanted:
        built = _column_indicators(chosen_strategy, wanted, indicators, models, device, batch_size)
        try:
            scored = score(records, built, cache=cache, progress=progress, executor=executor)
        except InstructMiningError:
            raise
        except ValueError as exc:  # e.g. ifd without a model under the lite profile
            raise ParameterError(
                f"strategy {chosen_strategy.name!r}: {exc} (--model {wanted[0]}=NAME_OR_PATH)"
            ) from None
        for col in wanted:
            frame[col] = scored[col].to_numpy()
    pool = ScoredPool(
        records,
        frame,
        rule if ranked_by_rule else None,
        seed,
        embed,
        own=own,
        set_level=set_level,
    )

    duplicate_of: dict[int, int] = {}
    kept = np.arange(n, dtype=np.int64)
    dropped = np.empty(0, dtype=np.int64)
    if dups is not None:
        by_rule = rule_order(pool) if chosen_strategy.needs_rule else None
        duplicate_of = keepers(dups.clusters, records, by_rule)
        gone = np.zeros(n, dtype=bool)
        gone[list(duplicate_of)] = True
        kept, dropped = np.flatnonzero(~gone), np.flatnonzero(gone)
        frame["duplicate_of"] = [
            ids[duplicate_of[i]] if i in duplicate_of else None for i in range(n)
        ]
    candidates = pool.subset(kept) if dups is not None else pool

    if max_predicted_loss is not None:
        predicted = frame["predicted_loss"].to_numpy()
        size = int(np.sum(predicted[kept] <= max_predicted_loss))
        if size == 0:
            raise ParameterError(
                f"no record has a predicted loss <= {max_predicted_loss}; the lowest is "
                f"{np.nanmin(predicted):.4g}"
            )
    picked = checked_choice(
        chosen_strategy, chosen_strategy.choose(candidates, size), len(kept), size
    )
    chosen = kept[picked]
    order = kept[chosen_strategy.ranking(candidates, picked)]
    dropped_tail = np.empty(0, dtype=np.int64)
    if len(dropped):
        tail = pool.subset(dropped)
        dropped_tail = dropped[chosen_strategy.ranking(tail, np.empty(0, dtype=np.int64))]
    check: dict[str, dict[str, Any]] = {}
    if chosen_strategy.needs_rule:
        assert rule is not None
        check = check_subset(rule, frame, chosen, own={n: own for n in set_level} if own else None)
    messages = check_messages(check)
    for message in messages:
        warnings.warn(message, FittedRangeWarning, stacklevel=2)
    rank = np.empty(n, dtype=np.int64)
    rank[np.concatenate([order, dropped_tail])] = np.arange(1, n + 1)
    frame["rank"] = rank
    frame["selected"] = False
    frame.loc[chosen, "selected"] = True
    settings = {
        "strategy": named.name,
        "k": k,
        "fraction": fraction,
        "max_predicted_loss": max_predicted_loss,
        "diversity": chosen_strategy.threshold if isinstance(chosen_strategy, Diverse) else None,
        "within_range": isinstance(chosen_strategy.base, RuleInRange),
        "dedup": dedup.to_dict() if dedup is not None else None,
        "seed": seed,
        "rule": rule.name if rule is not None else None,
    }
    return Selection(
        chosen,
        frame,
        named.name,
        settings,
        int(candidates.notes.get("rejected_for_diversity", 0)),
        range_check=check,
        range_warnings=messages,
        range_swaps=int(candidates.notes.get("range_swaps", 0)),
        duplicates_dropped=len(duplicate_of),
        duplicate_clusters=len(dups.clusters) if dups is not None else 0,
        column_indicators={ind.name: ind.params() for ind in built},
    )


def _score_rule(
    records: Sequence[Record],
    rule: Rule,
    frame: Any,
    models: Mapping[str, str] | None,
    device: str | None,
    batch_size: int | None,
    cache: str | Path | None,
    progress: bool,
    executor: Executor | None = None,
) -> list[Indicator]:
    """Add the rule's indicators and its prediction to `frame` (warning about NaN ones);
    the indicators it scored with."""
    indicators = rule_indicators(rule, models=models, device=device, batch_size=batch_size)
    scored = score(records, indicators, cache=cache, progress=progress, executor=executor)
    for col in scored.columns[1:]:
        frame[col] = scored[col].to_numpy()
    eta = rule.linear_predictor(frame)
    frame["predicted_log_loss" if rule.target_transform == "log" else "predicted_loss"] = eta
    if rule.target_transform == "log":
        frame["predicted_loss"] = np.exp(eta)
    n_nan = int(np.isnan(eta).sum())
    if n_nan:
        warnings.warn(
            f"{n_nan} records have no prediction (an indicator is NaN); they are ranked last",
            stacklevel=3,
        )
    return indicators


def _own_values(
    records: Sequence[Record], indicators: Mapping[str, Indicator], cache: str | Path | None
) -> Callable[[str, np.ndarray], float]:
    """A subset's own mean of a set-level indicator (knn6 among the subset's records alone),
    through the score cache: knn6's embeddings are cached per record, so a subset costs
    its neighbour search only. Memoised by subset."""
    seen: dict[tuple[str, bytes], float] = {}

    def own(name: str, rows: np.ndarray) -> float:
        key = (name, np.sort(np.asarray(rows, dtype=np.int64)).tobytes())
        if key not in seen:
            subset = [records[int(i)] for i in rows]
            values = score(subset, [indicators[name]], cache=cache)[name].to_numpy(float)
            finite = values[np.isfinite(values)]
            seen[key] = float(finite.mean()) if len(finite) else math.nan
        return seen[key]

    return own


def _column_indicators(
    strategy: Strategy,
    names: Sequence[str],
    given: Sequence[Indicator] | None,
    models: Mapping[str, str] | None,
    device: str | None,
    batch_size: int | None,
) -> list[Indicator]:
    """The indicators a strategy's columns are scored with: those `given`, else the profile's."""
    from instructmining.indicators import profiles

    by_name = {ind.name: ind for ind in given or ()}
    out = [by_name[name] for name in names if name in by_name]
    missing = [name for name in names if name not in by_name]
    if missing:
        try:
            plan = profiles.build(
                names=missing, models=dict(models or {}), device=device, batch_size=batch_size
            )
        except KeyError as exc:
            raise ParameterError(f"strategy {strategy.name!r}: {exc.args[0]}") from None
        out += plan.indicators
    return out


def _embeddings(
    records: Sequence[Record], rule: Rule | None, given: Sequence[Indicator] | None = None
) -> np.ndarray:
    """L2-normalised embeddings in the knn6 space: the rule's configuration, else the one
    `given` (a study's), else the default (offline TF-IDF + SVD)."""
    params = rule.indicators.get("knn6") if rule is not None else None
    if params:
        assert rule is not None
        knn = from_params(params, source=rule_where(rule), name="knn6")
    else:
        knn = next((ind for ind in given or () if ind.name == "knn6"), None) or from_params(
            {"name": "knn6"}, name="knn6"
        )
    if not isinstance(knn, KNN):
        raise ParameterError(
            "--diversity, kcenter and semantic dedup need the built-in knn6 indicator's "
            "embeddings; a plugin took the name knn6"
        )
    return np.asarray(knn.embed(records), dtype=np.float64)
