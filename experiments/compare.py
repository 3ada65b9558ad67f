"""Does selection work? Finetune on subsets of one pool chosen by several strategies.

Strategies are names of the selection registry (`selection.strategies`: rule,
rule-in-range, random, longest, top:IND, bottom:IND, kcenter, plugins, each with an
optional ``+diverse:COS``); here IND must be a study indicator, scored with the
study's settings, and a strategy that can use the rule (kcenter's start) gets it.

Every (strategy, seed) run is one finetuning + evaluation through the study
runner, stored in a results store beside the study so that a killed comparison
resumes. The seed changes the finetuning seed for every strategy and, for a
seeded strategy (random; kcenter without a rule), the subset too; the other
subsets do not depend on it. Every subset is chosen before the first finetuning,
so a strategy that cannot be applied stops the comparison before any training.

Each run row records the subset's mean of every study indicator
(``subset_mean_<indicator>``), scored on the subset as a set like a study
candidate, so the means are on the scale the rule was fitted on. Indicator values
used for ranking (``top:``/``bottom:``) are scored over the whole pool. Both go
through the study's score cache. Paired differences compare strategies within a
seed: every strategy against ``random``, and ``rule`` against every other one
(the tables: `experiments.comparison`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import InstructMiningError, ParameterError
from instructmining.experiments.comparison import Comparison
from instructmining.experiments.evalset import remove_overlap
from instructmining.experiments.lock import holds_study_lock
from instructmining.experiments.runner import (
    RunSettings,
    describe_error,
    indicator_means,
    prepare_base,
    resolve_settings,
    train_and_evaluate,
)
from instructmining.experiments.store import ResultsStore
from instructmining.experiments.study import MANIFEST, Study
from instructmining.indicators.base import Indicator
from instructmining.records import Record
from instructmining.regression import Rule
from instructmining.selection import select
from instructmining.selection.strategies import Strategy, choices, parse
from instructmining.writers import atomic_path, write_json, write_rows

#: the default set
STRATEGIES = ("rule", "random", "longest")
#: part of the comparison folder's fingerprint: bumped when the rows change meaning
#: (3: the folder no longer depends on the strategies or the rule; runs of a strategy
#: that reads the rule are keyed by the rule's digest)
_FORMAT = 3


def parse_strategies(names: Sequence[str], indicators: Sequence[str]) -> list[str]:
    """Canonical strategy names, checked, in the order given (repeats dropped).

    Names go through the strategy registry; `indicators` are the study's
    indicator names, the only ones a strategy's columns (IND of ``top:IND``) may name.
    """
    out: list[str] = []
    for raw in names:
        if not raw.strip():
            continue
        strategy = parse(raw, option="--strategies")
        for column in strategy.columns():
            if column not in indicators:
                raise ParameterError(
                    f"--strategies: strategy {strategy.name!r}: {column!r} is not an indicator "
                    f"of the study; choose from {', '.join(indicators) or '(the study has none)'}"
                )
        if strategy.name not in out:
            out.append(strategy.name)
    if not out:
        raise ParameterError(f"--strategies: no strategy given; choose from {choices()}")
    return out


def study_indicator_names(study: Study) -> list[str]:
    """The names of the study's indicators, in manifest order."""
    return [str(p["name"]) for p in study.indicator_params]


def subset_file(folder: Path, run: str) -> Path:
    """Where a run's record ids are kept (``top:ifd`` -> ``top_ifd``: a portable name)."""
    return folder / "subsets" / f"{run.replace(':', '_')}.json"


def _check_fixed_subsets(
    folder: Path,
    subsets: Mapping[tuple[str, int], Sequence[Record]],
    seeded: set[str],
    finished: set[str],
    run_id: Callable[[str, int], str],
) -> None:
    """Refuse to resume when a strategy's fixed subset is no longer what its runs trained on.

    A strategy whose choice does not depend on the seed must give every seed the same
    records; if a resumed comparison chooses differently (the selection code or the
    cached scores changed between sessions), its later seeds would measure another
    subset under the same name. Runs finished before subsets were kept are not checked.
    """
    for (strategy, _), subset in subsets.items():
        if strategy in seeded:
            continue
        now = {r.id for r in subset}
        stem = run_id(strategy, 0).rsplit("-seed", 1)[0]
        for rid in sorted(finished):
            path = subset_file(folder, rid)
            if rid.rsplit("-seed", 1)[0] != stem or not path.exists():
                continue
            before = set(json.loads(path.read_text(encoding="utf-8")))
            if before != now:
                raise InstructMiningError(
                    f"the {strategy} subset chosen now differs from the one run {rid} trained "
                    f"on ({len(now - before)} of {len(now)} records; kept in {path}): the "
                    "selection code or the score cache changed since that run. Finish this "
                    "comparison with the code that started it, or start a new one by moving "
                    f"{folder} aside"
                )


def _composition(
    folder: Path,
    records: Sequence[Record],
    runs: Any,
    by: str,
    run_id: Callable[[str, int], str],
) -> dict[str, dict[str, float]]:
    """Per strategy: the share of each value of source field `by` over its runs' subsets."""
    by_id = {r.id: r for r in records}
    out: dict[str, dict[str, float]] = {}
    for strategy, group in runs.groupby("strategy", sort=False):
        subsets = [
            json.loads(path.read_text(encoding="utf-8"))
            for path in (
                subset_file(folder, run_id(str(strategy), int(sd))) for sd in group["seed"]
            )
            if path.exists()  # a run finished before subsets were kept has none
        ]
        shares: dict[str, float] = {}
        for ids in subsets:
            for rid in ids:
                value = str(by_id[rid].fields.get(by, "")) if rid in by_id else "?"
                shares[value] = shares.get(value, 0.0) + 1.0 / (len(ids) * len(subsets))
        out[str(strategy)] = dict(sorted(shares.items()))
    return out


def check_field(records: Sequence[Record], by: str) -> None:
    """ParameterError unless the pool's source rows carry field `by` (checked before work)."""
    if records and not any(by in r.fields for r in records):
        raise ParameterError(
            f"--by {by}: the pool's rows have no field {by!r} "
            f"(they have: {', '.join(sorted(records[0].fields)) or 'none'})"
        )


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def choose_subset(
    strategy: str | Strategy,
    records: Sequence[Record],
    rule: Rule | None,
    *,
    size: int,
    seed: int,
    indicators: Sequence[Indicator] = (),
    models: Mapping[str, str] | None = None,
    cache: str | Path | None = None,
    progress: bool = False,
) -> list[Record]:
    """The subset one strategy picks from `records` (see the module docstring).

    `indicators` (the study's) score the columns a strategy ranks by; the rule goes
    to a strategy that uses it.
    """
    chosen = parse(strategy)
    picked = select(
        records,
        rule if chosen.uses_rule else None,
        k=size,
        strategy=chosen,
        seed=seed,
        indicators=indicators,
        models=models,
        cache=cache,
        progress=progress,
    )
    return picked.subset(records)


def response_tokens(base: str, records: Sequence[Record], settings: RunSettings) -> list[int]:
    """Response tokens each record trains on under `settings` (after the max-length cut).

    What a token budget counts: the loss positions finetuning takes on the record,
    as `train_target_tokens` of a finished run sums them.
    """
    from instructmining.experiments.finetune import load_tokenizer
    from instructmining.experiments.template import IGNORE, encode_all

    pairs = encode_all(
        load_tokenizer(base), records, settings.train.max_length, settings.train.template
    )
    return [sum(label != IGNORE for label in labels) for _, labels in pairs]


def choose_within_budget(
    strategy: str | Strategy,
    records: Sequence[Record],
    rule: Rule | None,
    counts: Mapping[str, int],
    *,
    budget: int,
    **options: Any,
) -> list[Record]:
    """The largest subset of the strategy's choosing whose response tokens stay within `budget`.

    `counts` holds each record's response tokens by id (`response_tokens`); `options`
    (seed, indicators, ...) go to `choose_subset`. A nested strategy's choice is the
    longest prefix of its ranking that fits; one whose subsets are not nested
    (rule-in-range) is asked for sizes k by bisection, taking the largest k whose
    subset fits (its token total grows with k, though not strictly).
    """
    chosen = parse(strategy)

    def pick(size: int) -> list[Record]:
        return choose_subset(chosen, records, rule, size=size, **options)

    best: list[Record] = []
    if chosen.nested:
        ranking = pick(len(records))  # cumulative tokens never fall: count the prefix that fits
        used = itertools.accumulate(counts[r.id] for r in ranking)
        best = ranking[: sum(1 for total in used if total <= budget)]
    else:
        low, high = 0, len(records)  # invariant: the subset of size `low` fits (0 always)
        while low < high:
            mid = (low + high + 1) // 2
            subset = pick(mid)
            if sum(counts[r.id] for r in subset) <= budget:
                low, best = mid, subset
            else:
                high = mid - 1
    if not best:
        raise ParameterError(
            f"--tokens {budget}: strategy {chosen.name!r} cannot choose even one record "
            "within the budget; raise --tokens"
        )
    return best


@holds_study_lock("study compare")
def compare_strategies(
    study_path: str | Path,
    pool: Sequence[Record],
    rule: Rule,
    *,
    size: int | None = None,
    tokens: int | None = None,
    seeds: int = 5,
    settings: RunSettings,
    strategies: Sequence[str] = STRATEGIES,
    models: dict[str, str] | None = None,
    progress: bool = False,
    on_result: Callable[[str, int, dict[str, Any] | str], None] | None = None,
    by: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """Run (or resume) the comparison; results live in STUDY/compare/<fingerprint>/.

    Subsets hold `size` records each, or, with `tokens` instead, as many records as a
    strategy's choice fits into that many response tokens (`choose_within_budget`): an
    equal token budget, so that a strategy of long records does not win by volume alone.
    `by`: a field of the pool's source rows (dolly's ``category``) whose make-up of
    every strategy's subsets is tabled, read from the kept record ids of each run.
    `log` receives one line as each phase starts (for runs nobody watches on a terminal).
    """

    def say(line: str) -> None:
        if log is not None:
            log(line)

    from instructmining.indicators.engine import score
    from instructmining.indicators.registry import from_params

    if seeds < 1:
        raise ParameterError(f"--seeds must be >= 1, got {seeds}")
    if (size is None) == (tokens is None):
        raise ParameterError("give exactly one of --size (records) and --tokens (a budget)")
    if tokens is not None and tokens < 1:
        raise ParameterError(f"--tokens must be >= 1, got {tokens}")
    study = Study(study_path)
    names = study_indicator_names(study)
    strategies = parse_strategies(strategies, names)
    for name in strategies:
        parse(name).check(rule)  # e.g. rule-in-range needs the rule's fitted range
    # the manifest's stored settings are checked before any work (indicators.spec)
    indicators = [from_params(p, source=study.path / MANIFEST) for p in study.indicator_params]
    study_indicators = list(indicators)
    if any(parse(name).uses_rule for name in strategies):
        # a rule feature outside the plan (study fit --add-indicators) is reported per
        # subset too: it is what places the rule's subsets against its fitted range
        indicators += [
            from_params(rule.indicators[f], source=rule.source or rule.name)
            for f in rule.features
            if f not in names and f in rule.indicators
        ]
        names = [ind.name for ind in indicators]
    kept, removed = remove_overlap({"pool": list(pool)}, study.eval_records)
    records = kept["pool"]
    if by:
        check_field(records, by)
    if size is not None and size > len(records):
        raise ParameterError(
            f"--size {size} exceeds the {len(records)} pool records left after removing "
            f"{removed['pool']} that overlap D_eval"
        )
    base = prepare_base(study, settings, progress=progress)
    settings = resolve_settings(settings, base)
    # One folder per pool, size, base model, training and indicators: a strategy added
    # later, or a new rule, runs only its own subsets; random and the other baselines are
    # shared. A run of a strategy that reads the rule carries the rule's digest.
    key = _fingerprint(
        sorted(r.id for r in records),
        size if tokens is None else {"response_tokens": tokens},
        settings.base_model,
        settings.train.key(),
        study.indicator_params,
        _FORMAT,
    )
    rule_digest = _fingerprint(rule.to_dict())[:8]

    def run_id(strategy: str, seed: int) -> str:
        tag = f"@{rule_digest}" if parse(strategy).uses_rule else ""
        return f"{strategy}{tag}-seed{seed}"

    folder = study.path / "compare" / key
    folder.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(folder / "runs.sqlite")
    finished = {rid for rid, e in store.entries().items() if e.status == "done"}
    # seed by seed: a comparison stopped early still holds complete pairs of strategies
    todo = [
        (strategy, seed)
        for seed in range(seeds)
        for strategy in strategies
        if run_id(strategy, seed) not in finished
    ]
    # every subset and its means first: a strategy that cannot be applied stops before any
    # training, and a resumed comparison finds every score it needs in the cache
    seeded = {name for name in strategies if parse(name).seed_matters(rule)}
    subsets: dict[tuple[str, int], list[Record]] = {}
    counts = (
        dict(zip((r.id for r in records), response_tokens(base, records, settings), strict=True))
        if tokens is not None and todo
        else {}
    )
    for strategy, seed in todo:
        pick_seed = seed if strategy in seeded else 0
        if (strategy, pick_seed) not in subsets:
            say(f"choosing the subset of {strategy} (seed {pick_seed})")
            common: dict[str, Any] = {
                "seed": pick_seed,
                "indicators": study_indicators,
                "models": models,
                "cache": study.cache_dir,
                "progress": progress,
            }
            if tokens is None:
                subset = choose_subset(strategy, records, rule, size=int(size or 0), **common)
            else:
                subset = choose_within_budget(
                    strategy, records, rule, counts, budget=tokens, **common
                )
                used = sum(counts[r.id] for r in subset)
                say(f"{strategy}: {len(subset)} records, {used} of {tokens} response tokens")
            subsets[(strategy, pick_seed)] = subset
    _check_fixed_subsets(folder, subsets, seeded, finished, run_id)
    if subsets:
        say(f"scoring the {len(subsets)} subsets on every study indicator")
    means = {
        pick: indicator_means(
            score(subset, indicators, cache=study.cache_dir, progress=progress), names
        )
        for pick, subset in subsets.items()
    }
    (folder / "subsets").mkdir(exist_ok=True)
    for strategy, seed in todo:  # each run's record ids, in the strategy's order, for analysis
        subset = subsets[(strategy, seed if strategy in seeded else 0)]
        write_json([r.id for r in subset], subset_file(folder, run_id(strategy, seed)))
    wanted = {run_id(s, seed) for s in strategies for seed in range(seeds)}

    def summarise() -> Comparison | None:
        """Rewrite runs.csv and the summary from every finished run (None: none yet).

        Called after each run, so a comparison that is stopped, or still running,
        always has a summary of what it holds; it says how many runs it covers.
        """
        entries = store.entries()
        done = sorted(
            (e for rid, e in entries.items() if rid in wanted and e.status == "done" and e.row),
            key=lambda e: e.finished,
        )
        if not done:
            return None
        import pandas as pd

        runs = pd.DataFrame.from_records([e.row for e in done if e.row is not None])
        order = runs["strategy"].map({n: i for i, n in enumerate(strategies)})
        runs = runs.assign(_order=order).sort_values(["_order", "seed"]).drop(columns="_order")
        composition = _composition(folder, records, runs, by, run_id) if by else {}
        result = Comparison(
            runs.reset_index(drop=True),
            folder,
            names,
            dict(rule.ranges),
            rule,
            composition=composition,
            by=by or "",
            planned=len(wanted),
        )
        write_rows(result.runs, folder / "runs.csv", overwrite=True)
        with atomic_path(folder / "summary.md") as tmp:
            tmp.write_text(result.markdown(), encoding="utf-8")
        write_json(
            {
                "pool": len(records),
                "removed_eval_overlap": removed["pool"],
                "size": size,
                "response_token_budget": tokens,
                "seeds": seeds,
                "strategies": strategies,
                "runs_planned": len(wanted),
                "runs_done": len(result.runs),
                "complete": len(result.runs) == len(wanted),
                "rule": rule.name,
                "base_model": settings.base_model,
                "indicators": names,
                "per_strategy": result.per_strategy(),
                "subset_means": result.subset_means(),
                "rule_ranges": result.ranges,
                "rule_attribution_vs_random": result.attribution(),
                "paired_vs_random": result.versus(),
                "paired": result.paired(),
                **({"composition_by": by, "composition": composition} if by else {}),
            },
            folder / "summary.json",
        )
        return result

    for strategy, seed in todo:
        pick = (strategy, seed if strategy in seeded else 0)
        subset = subsets[pick]
        rid = run_id(strategy, seed)
        run_settings = replace(settings, train=replace(settings.train, seed=seed))
        started = time.perf_counter()

        def run_log(line: str, rid: str = rid) -> None:
            say(f"{rid}: {line}")

        try:
            row = train_and_evaluate(
                base, subset, study.eval_records, run_settings, progress=progress, log=run_log
            )
        except Exception as exc:  # one failed run is recorded; the comparison goes on
            store.record_failed(rid, describe_error(exc))
            if on_result:
                on_result(strategy, seed, describe_error(exc))
            continue
        row |= {
            "wall_s": time.perf_counter() - started,
            "strategy": strategy,
            "rule_digest": rule_digest if parse(strategy).uses_rule else "",
            "seed": seed,
            "size": len(subset),
            **({"token_budget": tokens} if tokens is not None else {}),
            "subset_mean_output_words": float(np.mean([len(r.output.split()) for r in subset])),
            **{f"subset_mean_{name}": value for name, value in means[pick].items()},
        }
        store.record_done(rid, row)
        summarise()
        if on_result:
            on_result(strategy, seed, row)
    result = summarise()
    if result is None:
        raise InstructMiningError(
            f"no run of the comparison finished; see {folder / 'runs.sqlite'}"
        )
    return result


def comparison_progress(study_path: str | Path) -> list[dict[str, Any]]:
    """Where each comparison of a study stands (`study status`), read from its folder.

    Per folder: runs done and planned by the last `study compare` there (its
    summary.json), failed runs, an estimate of the time left, and the summary's
    path; a folder whose first run has not finished has no plan yet.
    """
    study = Study(study_path)
    out = []
    for folder in sorted(p for p in (study.path / "compare").glob("*") if p.is_dir()):
        entries = ResultsStore(folder / "runs.sqlite").entries()
        done = [e for e in entries.values() if e.status == "done"]
        summary = folder / "summary.json"
        plan = json.loads(summary.read_text(encoding="utf-8")) if summary.exists() else {}
        runs_done = int(plan.get("runs_done", len(done)))
        planned = plan.get("runs_planned")
        out.append(
            {
                "folder": folder,
                "done": runs_done,
                "planned": planned,
                "failed": sum(e.status == "failed" for e in entries.values()),
                "strategies": list(plan.get("strategies", [])),
                "seeds": plan.get("seeds"),
                "left_s": _time_left(done, plan, (planned or 0) - runs_done),
                "summary": folder / "summary.md" if summary.exists() else None,
            }
        )
    return out


def _time_left(done: Sequence[Any], plan: Mapping[str, Any], left: int) -> float | None:
    """Seconds the `left` unfinished runs should take: each at its strategy's median.

    Strategies differ several-fold (a long-output subset trains on more tokens), so
    one median over all runs misleads; a strategy with no finished run yet counts
    at the median of every run. None without a finished run or with nothing left.
    """
    walls: dict[str, list[float]] = {}
    for e in done:
        if e.wall_s is not None and e.row:
            walls.setdefault(str(e.row.get("strategy")), []).append(float(e.wall_s))
    every = [w for ws in walls.values() for w in ws]
    if left <= 0 or not every:
        return None
    overall = statistics.median(every)
    seeds = int(plan.get("seeds") or 0)
    remaining = [
        (name, max(0, seeds - len(walls.get(name, [])))) for name in plan.get("strategies", [])
    ]
    if sum(n for _, n in remaining) != left:  # runs of another rule, or no plan: plain median
        return left * overall
    return sum(n * statistics.median(walls.get(name) or [overall]) for name, n in remaining)
