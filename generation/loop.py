"""The closed loop: generate → score → select → generate, one folder per round.

Each round runs the Self-Instruct generator (`round_N/`), scores its records with
the rule's indicators, keeps the `keep` records the selection strategy picks (by
default the rule's: the lowest predicted loss; any name of `selection.strategies`)
and makes them the next round's machine pool. Rounds already finished are reused on a
rerun; an unfinished round resumes inside the generator.

Files: ``round_N/`` (the generator's files plus ``selected.jsonl`` and
``scores.csv``), ``loop_state.json`` (settings and per-round statistics),
``loop_stats.csv`` (the table) and ``loop.png`` (the plot).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.errors import InputError
from instructmining.generation.backends.base import LLMBackend
from instructmining.generation.generator import FLAT_FILE, SelfInstructGenerator
from instructmining.generation.seeds import Task, read_tasks

STATE_FILE = "loop_state.json"
SELECTED_FILE = "selected.jsonl"


@dataclass
class LoopResult:
    """Per-round statistics and the final machine pool (the last round's selection)."""

    rounds: list[dict[str, Any]]
    pool: list[Task]
    out_dir: Path
    message: str = ""


def tasks_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[Task]:
    """Group Alpaca-layout rows by instruction into tasks (order of first appearance)."""
    merged: dict[str, list[tuple[str, str]]] = {}
    clf: dict[str, bool | None] = {}
    for row in rows:
        instr = str(row["instruction"])
        merged.setdefault(instr, []).append((str(row.get("input") or ""), str(row["output"])))
        flag = row.get("is_classification")
        clf.setdefault(instr, None if flag is None else bool(flag))
    return [Task(k, tuple(v), clf[k]) for k, v in merged.items()]


def run_loop(
    seeds: Sequence[Task],
    out_dir: str | Path,
    *,
    backend: LLMBackend,
    rule: Any,
    rounds: int = 3,
    per_round: int = 500,
    keep: int = 200,
    machine_pool: Sequence[Task] = (),
    generator_settings: Mapping[str, Any] | None = None,
    models: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    seed: int = 42,
    strategy: str = "rule",
    progress: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Run `rounds` rounds of generate → score → select; returns per-round statistics.

    `strategy` (a selection strategy name, seeded with `seed`) picks the `keep`
    records; the rule's predictions are computed and reported whatever it is.
    """
    from instructmining.readers import read_records
    from instructmining.selection import rule_indicators, select
    from instructmining.selection.strategies import parse
    from instructmining.writers import write_json, write_rows

    for name, value in (("rounds", rounds), ("per_round", per_round), ("keep", keep)):
        if value < 1:
            raise ValueError(
                f"The '{name}' parameter of run_loop must be >= 1. Got {value} instead."
            )
    chooser = parse(strategy, option="--strategy")
    chooser.check(rule)
    # fail before paying for generation when a checkpoint the rule needs is missing
    rule_indicators(rule, models=models, device=device, batch_size=batch_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "rule": rule.name,
        "rule_features": list(rule.features),
        "per_round": per_round,
        "keep": keep,
        "seed": seed,
        "generator": dict(generator_settings or {}),
    }
    if chooser.name != "rule":  # absent for the rule: loops written before it resume
        settings["strategy"] = chooser.name
    state_path = out / STATE_FILE
    done: list[dict[str, Any]] = []
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("settings") != settings:
            old = state.get("settings", {})
            diff = sorted(k for k in {*settings, *old} if old.get(k) != settings.get(k))
            raise InputError(
                f"{out}: holds a loop run with other settings (differs in: {', '.join(diff)}); "
                "use another output folder or the same settings"
            )
        done = list(state.get("rounds", []))

    pool = list(machine_pool)
    stats: list[dict[str, Any]] = []
    message = ""
    for number in range(rounds):
        rdir = out / f"round_{number}"
        finished = next((r for r in done if r["round"] == number), None)
        if finished is not None and (rdir / SELECTED_FILE).exists():
            stats.append(finished)
            pool = read_tasks(rdir / SELECTED_FILE)
            continue
        gen = SelfInstructGenerator(
            backend=backend, n=per_round, seed=seed + number, **dict(generator_settings or {})
        )
        result = gen.run(seeds, rdir, machine_pool=pool, progress=progress)
        records = read_records(rdir / FLAT_FILE).records if result.tasks else []
        if not records:
            message = f"round {number} kept no task; the loop stops ({result.message})"
            break
        k = min(keep, len(records))
        selection = select(
            records,
            rule,
            k=k,
            strategy=chooser,
            seed=seed,
            score_rule=True,
            models=models,
            device=device,
            batch_size=batch_size,
            cache=out / "score_cache.sqlite",
            progress=progress,
        )
        chosen = selection.subset(records)
        rows = [dict(r.fields) for r in chosen]
        write_rows(selection.scores, rdir / "scores.csv", overwrite=True)
        write_rows(rows, rdir / SELECTED_FILE, overwrite=True)
        pool = tasks_from_rows(rows)
        row = _round_stats(number, result, selection, rule, len(records), len(pool))
        stats.append(row)
        done = [r for r in done if r["round"] != number] + [row]
        write_json({"version": 1, "settings": settings, "rounds": done}, state_path)
        if on_round is not None:
            on_round(row)
        if not result.complete:
            message = f"round {number}: {result.message}"
    if stats:
        write_rows(_flat_stats(stats), out / "loop_stats.csv", overwrite=True)
        plot_loop(stats, out / "loop.png")
    return LoopResult(stats, pool, out, message)


def _round_stats(
    number: int, result: Any, selection: Any, rule: Any, n_records: int, n_pool_tasks: int
) -> dict[str, Any]:
    frame = selection.scores
    chosen = frame["selected"].to_numpy()
    dropped: Counter[str] = Counter()
    generated = accepted = 0
    for r in result.rounds:
        dropped.update(r.get("dropped", {}))
        generated += int(r.get("generated", 0))
        accepted += int(r.get("accepted_instructions", 0))

    def mean(column: str, mask: Any = None) -> float | None:
        if column not in frame:
            return None
        values = frame[column].to_numpy(dtype=float)
        values = values[mask] if mask is not None else values
        values = values[~np.isnan(values)]
        return round(float(values.mean()), 6) if len(values) else None

    return {
        "round": number,
        "generated": generated,
        "accepted_instructions": accepted,
        "kept_tasks": len(result.tasks),
        "records": n_records,
        "selected": int(chosen.sum()),
        "selected_tasks": n_pool_tasks,
        "dropped": dict(sorted(dropped.items())),
        "mean_indicators": {f: mean(f) for f in rule.features},
        "mean_indicators_selected": {f: mean(f, chosen) for f in rule.features},
        "mean_predicted_loss": mean("predicted_loss"),
        "mean_predicted_loss_selected": mean("predicted_loss", chosen),
    }


def _flat_stats(stats: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for s in stats:
        row = {k: v for k, v in s.items() if not isinstance(v, dict)}
        for reason, count in s.get("dropped", {}).items():
            row[f"dropped_{reason}"] = count
        for name, value in s.get("mean_indicators", {}).items():
            row[f"mean_{name}"] = value
        for name, value in s.get("mean_indicators_selected", {}).items():
            row[f"selected_mean_{name}"] = value
        rows.append(row)
    return rows


def format_loop_table(stats: Sequence[Mapping[str, Any]]) -> str:
    """The per-round table printed by `instructmining loop`."""
    rows = _flat_stats(stats)
    head: dict[str, None] = {}
    for r in rows:
        head.update(dict.fromkeys(r))
    cols = list(head)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def plot_loop(stats: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Mean predicted loss (all records vs the selected ones) and counts per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from instructmining.writers import atomic_path

    rounds = [s["round"] for s in stats]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, label, style in (
        ("mean_predicted_loss", "all generated records", "o-"),
        ("mean_predicted_loss_selected", "selected (next machine pool)", "s-"),
    ):
        values = [s.get(key) if s.get(key) is not None else math.nan for s in stats]
        ax1.plot(rounds, values, style, label=label)
    ax1.set_xlabel("round")
    ax1.set_ylabel("mean predicted loss (lower is better)")
    ax1.set_xticks(rounds)
    ax1.legend(fontsize=8)
    width = 0.27
    for i, (key, label) in enumerate(
        (
            ("generated", "instructions generated"),
            ("kept_tasks", "tasks kept"),
            ("selected", "records selected"),
        )
    ):
        ax2.bar(
            [r + (i - 1) * width for r in rounds],
            [s.get(key, 0) for s in stats],
            width,
            label=label,
        )
    ax2.set_xlabel("round")
    ax2.set_xticks(rounds)
    ax2.set_ylabel("count")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return target
