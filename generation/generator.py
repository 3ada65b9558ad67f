"""The Self-Instruct loop, resumable: rounds of generate → filter → classify → instances → append.

Output folder (a killed run resumes from it without duplicates or lost tasks):

- ``tasks.jsonl``: one kept task per line in the nested Self-Instruct layout
  (instruction, instances, is_classification, plus round, id, max_similarity);
  appended and fsynced after each round. It is the run's source of truth.
- ``machine_generated.jsonl``: the same tasks flat, one Alpaca-layout row
  (instruction, input, output, is_classification, task_id, round) per instance, the
  file the rest of the project reads; rebuilt from ``tasks.jsonl`` on resume.
- ``state.json``: settings, per-round statistics and token usage, written atomically.

A round's work is written only when the round ends, and each round draws its
in-context examples from a random generator seeded by (seed, round number), so a
run killed mid-round and resumed redoes that round the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructmining.errors import DataError, InputError, InstructMiningError
from instructmining.generation import filters as F
from instructmining.generation.backends.base import Completion, LLMBackend, SamplingParams
from instructmining.generation.parsing import parse_instances, parse_instruction_list
from instructmining.generation.prompts import (
    CLASSIFY_PARAMS,
    INSTRUCTION_PARAMS,
    classify_prompt,
    instance_params,
    instance_prompt,
    instruction_prompt,
    parse_yes_no,
)
from instructmining.generation.rouge import RougeLIndex
from instructmining.generation.seeds import Task, task_from_nested

TASKS_FILE = "tasks.jsonl"
FLAT_FILE = "machine_generated.jsonl"
STATE_FILE = "state.json"
STATE_VERSION = 1

# drop reasons beyond the filters module's
TRUNCATED = "truncated_response"
NO_INSTANCES = "no_valid_instances"
TRUNCATED_INSTANCE = "truncated_instance"
SURPLUS = "over_requested_n"


@dataclass
class RoundStats:
    """What one round asked, got and kept; `dropped` counts instructions and instances by reason."""

    round: int
    prompts: int = 0
    generated: int = 0
    accepted_instructions: int = 0
    classification: int = 0
    kept: int = 0
    instances: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for state.json."""
        return {
            "round": self.round,
            "prompts": self.prompts,
            "generated": self.generated,
            "accepted_instructions": self.accepted_instructions,
            "classification": self.classification,
            "kept": self.kept,
            "instances": self.instances,
            "dropped": dict(sorted(self.dropped.items())),
            "seconds": round(self.seconds, 3),
            "usage": self.usage,
        }


@dataclass
class GenerationResult:
    """A finished (or stopped) run: its kept tasks, per-round statistics and where they are."""

    tasks: list[Task]
    rounds: list[dict[str, Any]]
    out_dir: Path
    complete: bool
    resumed_from: int = 0
    message: str = ""

    def dropped(self) -> dict[str, int]:
        """Drops over all rounds, by reason."""
        total: Counter[str] = Counter()
        for r in self.rounds:
            total.update(r.get("dropped", {}))
        return dict(sorted(total.items()))


class SelfInstructGenerator:
    """Self-Instruct (Wang et al., 2023) with the paper's settings as defaults.

    Each round sends `request_batch_size` prompts of `num_prompt_instructions`
    in-context instructions, `num_machine_instructions` of them from the machine pool
    (fewer while it is small) and the rest from the seeds; the new instructions pass
    the filters and the ROUGE-L check against every seed, machine-pool and kept
    instruction; then each is classified (yes/no) and gets instances (output-first for
    classification tasks). A task with no valid instance is dropped.
    """

    def __init__(
        self,
        *,
        backend: LLMBackend,
        n: int = 100,
        request_batch_size: int = 5,
        num_prompt_instructions: int = 8,
        num_machine_instructions: int = 2,
        similarity_threshold: float = 0.7,
        min_words: int = 4,
        max_words: int = 150,
        blocklist: Sequence[str] = F.DEFAULT_BLOCKLIST,
        banned_prefixes: Sequence[str] = F.DEFAULT_BANNED_PREFIXES,
        max_instances: int = 5,
        classification_only: bool = False,
        seed: int = 42,
        max_idle_rounds: int = 10,
    ) -> None:
        self.backend = backend
        self.n = n
        self.request_batch_size = request_batch_size
        self.num_prompt_instructions = num_prompt_instructions
        self.num_machine_instructions = num_machine_instructions
        self.similarity_threshold = similarity_threshold
        self.min_words = min_words
        self.max_words = max_words
        self.blocklist = tuple(blocklist)
        self.banned_prefixes = tuple(banned_prefixes)
        self.max_instances = max_instances
        self.classification_only = classification_only
        self.seed = seed
        self.max_idle_rounds = max_idle_rounds

    # --- settings ------------------------------------------------------------------

    def _validate(self) -> None:
        checks = [
            ("n", self.n, 1),
            ("request_batch_size", self.request_batch_size, 1),
            ("num_prompt_instructions", self.num_prompt_instructions, 1),
            ("num_machine_instructions", self.num_machine_instructions, 0),
            ("max_instances", self.max_instances, 1),
            ("max_idle_rounds", self.max_idle_rounds, 1),
        ]
        for name, value, low in checks:
            if value < low:
                raise ValueError(f"The '{name}' parameter must be >= {low}. Got {value} instead.")
        if self.num_machine_instructions > self.num_prompt_instructions:
            raise ValueError(
                "num_machine_instructions must not exceed num_prompt_instructions; got "
                f"{self.num_machine_instructions} > {self.num_prompt_instructions}"
            )
        if not 0.0 <= self.similarity_threshold <= 1.0:
            raise ValueError(
                f"similarity_threshold must be in [0, 1]; got {self.similarity_threshold}"
            )

    def settings(self) -> dict[str, Any]:
        """The settings that shape the output (n excluded: a resume may ask for more)."""
        return {
            "request_batch_size": self.request_batch_size,
            "num_prompt_instructions": self.num_prompt_instructions,
            "num_machine_instructions": self.num_machine_instructions,
            "similarity_threshold": self.similarity_threshold,
            "min_words": self.min_words,
            "max_words": self.max_words,
            "blocklist": list(self.blocklist),
            "banned_prefixes": list(self.banned_prefixes),
            "max_instances": self.max_instances,
            "classification_only": self.classification_only,
            "seed": self.seed,
        }

    # --- the run ---------------------------------------------------------------------

    def run(
        self,
        seeds: Sequence[Task],
        out_dir: str | Path,
        *,
        machine_pool: Sequence[Task] = (),
        on_round: Callable[[dict[str, Any]], None] | None = None,
        progress: bool = False,
    ) -> GenerationResult:
        """Generate until `n` tasks are kept in `out_dir`, resuming whatever is there already."""
        from instructmining.progress import progress_bar

        self._validate()
        seed_pool = (
            [t for t in seeds if t.is_classification] if self.classification_only else list(seeds)
        )
        if not seed_pool:
            raise DataError(
                "no seed tasks" + (" marked is_classification" if self.classification_only else "")
            )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fingerprint = self._fingerprint(seed_pool, machine_pool)
        state = self._load_state(out, fingerprint)
        kept = _read_tasks_file(out / TASKS_FILE)
        rounds: list[dict[str, Any]] = state.get("rounds", [])
        done_rounds = {r["round"] for r in rounds}
        for r in sorted({int(t.extra.get("round", 0)) for t in kept} - done_rounds):
            # killed after the tasks were appended but before the statistics were saved
            rounds.append(
                {
                    "round": r,
                    "kept": sum(1 for t in kept if t.extra.get("round") == r),
                    "recovered": True,
                }
            )
        rounds.sort(key=lambda r: r["round"])
        _rewrite_flat(out, kept)
        resumed_from = len(kept)

        seed_texts = [t.instruction for t in seed_pool]
        index = RougeLIndex(seed_texts)
        for t in machine_pool:
            index.add(t.instruction)
        for t in kept:
            index.add(t.instruction)
        seen = {_norm(s) for s in index.texts}
        machine_texts = [t.instruction for t in machine_pool] + [t.instruction for t in kept]
        flt = F.InstructionFilter(
            min_words=self.min_words,
            max_words=self.max_words,
            blocklist=self.blocklist,
            banned_prefixes=self.banned_prefixes,
        )

        next_round = max((r["round"] for r in rounds), default=-1) + 1
        idle = 0
        message = ""
        bar = progress_bar(self.n, "generating", enabled=progress, unit="task")
        bar.update(min(len(kept), self.n))
        try:
            while len(kept) < self.n:
                stats, new = self._round(
                    next_round, seed_texts, machine_texts, index, seen, flt, self.n - len(kept)
                )
                _append_tasks(out, new)
                kept.extend(new)
                for t in new:
                    index.add(t.instruction)
                    seen.add(_norm(t.instruction))
                    machine_texts.append(t.instruction)
                rounds.append(stats.to_dict())
                self._save_state(out, fingerprint, rounds, len(kept))
                bar.update(len(new))
                if on_round is not None:
                    on_round(stats.to_dict())
                next_round += 1
                idle = 0 if new else idle + 1
                if idle >= self.max_idle_rounds:
                    message = (
                        f"stopped after {idle} rounds in a row kept no task "
                        f"({len(kept)} of {self.n}); see {out / STATE_FILE} for the drop reasons"
                    )
                    break
        finally:
            bar.close()
        self._save_state(out, fingerprint, rounds, len(kept))
        return GenerationResult(
            kept, rounds, out, len(kept) >= self.n, resumed_from=resumed_from, message=message
        )

    def _round(
        self,
        number: int,
        seed_texts: list[str],
        machine_texts: list[str],
        index: RougeLIndex,
        seen: set[str],
        flt: F.InstructionFilter,
        wanted: int,
    ) -> tuple[RoundStats, list[Task]]:
        start = time.perf_counter()
        usage_before = self.backend.usage.to_dict()
        rng = random.Random(f"{self.seed}:{number}")
        stats = RoundStats(round=number)
        dropped: Counter[str] = Counter()

        prompts = [
            self._prompt(rng, seed_texts, machine_texts) for _ in range(self.request_batch_size)
        ]
        stats.prompts = len(prompts)
        completions = self._complete(prompts, INSTRUCTION_PARAMS)

        # instructions: per-item filters, then exact duplicates, then ROUGE-L against
        # everything kept and everything accepted earlier in this round
        accepted: list[str] = []
        accepted_norm: set[str] = set()
        in_round = RougeLIndex()
        for comp in completions:
            items = parse_instruction_list(comp.text)
            stats.generated += len(items)
            if comp.finish_reason == "length":
                # the list was cut off: Self-Instruct discards the whole response
                dropped[TRUNCATED] += len(items)
                continue
            for inst in items:
                reason = flt.check(inst)
                if reason is None and (_norm(inst) in seen or _norm(inst) in accepted_norm):
                    reason = F.DUPLICATE
                if reason is None and (
                    index.any_above(inst, self.similarity_threshold)
                    or in_round.any_above(inst, self.similarity_threshold)
                ):
                    reason = F.SIMILAR
                if reason is not None:
                    dropped[reason] += 1
                    continue
                accepted.append(inst)
                accepted_norm.add(_norm(inst))
                in_round.add(inst)
        stats.accepted_instructions = len(accepted)

        if self.classification_only:
            is_clf = [True] * len(accepted)
        else:
            answers = self._complete([classify_prompt(a) for a in accepted], CLASSIFY_PARAMS)
            is_clf = [parse_yes_no(c.text) for c in answers]
        stats.classification = sum(is_clf)

        new: list[Task] = []
        for flag in (False, True):
            batch = [a for a, c in zip(accepted, is_clf, strict=True) if c == flag]
            if not batch:
                continue
            comps = self._complete(
                [instance_prompt(a, classification=flag) for a in batch],
                instance_params(flag, self.max_instances),
            )
            for inst, comp in zip(batch, comps, strict=True):
                pairs = parse_instances(comp.text, classification=flag)
                if comp.finish_reason == "length" and pairs:
                    pairs = pairs[:-1]  # the last example was cut off mid-way
                    dropped[TRUNCATED_INSTANCE] += 1
                pairs, why = F.clean_instances(pairs, max_instances=self.max_instances)
                dropped.update(why)
                if not pairs:
                    dropped[NO_INSTANCES] += 1
                    continue
                new.append(Task(inst, tuple(pairs), flag, {"round": number}))
        # keep the order the instructions were generated in, not the class order
        order = {a: i for i, a in enumerate(accepted)}
        new.sort(key=lambda t: order[t.instruction])
        if len(new) > wanted:
            dropped[SURPLUS] += len(new) - wanted
            new = new[:wanted]
        final: list[Task] = []
        for t in new:
            best = index.most_similar(t.instruction, 1)
            sim = best[0][1] if best else 0.0
            most = index.texts[best[0][0]] if best else None
            final.append(
                Task(
                    t.instruction,
                    t.instances,
                    t.is_classification,
                    {
                        "id": _task_id(t.instruction),
                        "round": number,
                        "max_similarity": round(sim, 6),
                        "most_similar": most,
                    },
                )
            )
        stats.kept = len(final)
        stats.instances = sum(len(t.instances) for t in final)
        stats.dropped = dict(dropped)
        stats.seconds = time.perf_counter() - start
        after = self.backend.usage.to_dict()
        stats.usage = {k: after[k] - usage_before.get(k, 0) for k in after}
        return stats, final

    def _prompt(self, rng: random.Random, seed_texts: list[str], machine_texts: list[str]) -> str:
        machine = rng.sample(machine_texts, min(self.num_machine_instructions, len(machine_texts)))
        human = rng.sample(
            seed_texts, min(self.num_prompt_instructions - len(machine), len(seed_texts))
        )
        chosen = machine + human
        rng.shuffle(chosen)
        return instruction_prompt(chosen, classification=self.classification_only)

    def _complete(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        if not prompts:
            return []
        result = self.backend.complete(prompts, params)
        if len(result) != len(prompts):
            raise InstructMiningError(
                f"backend {self.backend.name} returned {len(result)} completions for {len(prompts)} prompts"
            )
        return result

    # --- state -----------------------------------------------------------------------

    def _fingerprint(self, seeds: Sequence[Task], pool: Sequence[Task]) -> dict[str, Any]:
        def digest(tasks: Iterable[Task]) -> str:
            h = hashlib.sha256()
            for t in tasks:
                h.update(t.instruction.encode("utf-8") + b"\0")
            return h.hexdigest()[:16]

        return {"settings": self.settings(), "seeds": digest(seeds), "machine_pool": digest(pool)}

    def _load_state(self, out: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
        path = out / STATE_FILE
        if not path.exists():
            # a fresh folder, or a run killed before its first state write: the tasks
            # file alone is enough to resume
            return {}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg})", path=path, line=exc.lineno) from None
        old = state.get("fingerprint", {})
        diff = sorted(
            [
                k
                for k in fingerprint["settings"]
                if old.get("settings", {}).get(k) != fingerprint["settings"][k]
            ]
            + [k for k in ("seeds", "machine_pool") if old.get(k) != fingerprint[k]]
        )
        if diff:
            raise InputError(
                f"{out}: holds a run made with other settings (differs in: {', '.join(diff)}); "
                "use another output folder or the same settings"
            )
        return state

    def _save_state(
        self, out: Path, fingerprint: dict[str, Any], rounds: list[dict[str, Any]], n_kept: int
    ) -> None:
        from instructmining.writers import write_json

        write_json(
            {
                "version": STATE_VERSION,
                "n_requested": self.n,
                "n_kept": n_kept,
                "fingerprint": fingerprint,
                "backend": self.backend.describe(),
                # summed over rounds, so that it covers every session of a resumed run
                "usage": _sum_usage(rounds),
                "rounds": rounds,
            },
            out / STATE_FILE,
        )


def _sum_usage(rounds: Sequence[dict[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for r in rounds:
        total.update(r.get("usage", {}))
    return dict(total)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _task_id(instruction: str) -> str:
    return hashlib.sha256(_norm(instruction).encode("utf-8")).hexdigest()[:16]


def _read_tasks_file(path: Path) -> list[Task]:
    """Kept tasks; a partial last line (a write cut by a kill) is cut off the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        with open(path, "rb+") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
        raw = raw[:end]
    tasks = []
    for i, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg})", path=path, line=i) from None
        tasks.append(task_from_nested(row, path=path, line=i))
    return tasks


def _append_tasks(out: Path, tasks: Sequence[Task]) -> None:
    """Append tasks to both output files and fsync them, tasks file first (the source of truth)."""
    if not tasks:
        return
    nested = "".join(json.dumps(t.to_nested(), ensure_ascii=False) + "\n" for t in tasks)
    flat = "".join(
        json.dumps(row, ensure_ascii=False) + "\n"
        for t in tasks
        for row in t.to_rows(task_id=t.extra.get("id"), round=t.extra.get("round"))
    )
    for name, text in ((TASKS_FILE, nested), (FLAT_FILE, flat)):
        with open(out / name, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def _rewrite_flat(out: Path, tasks: Sequence[Task]) -> None:
    from instructmining.writers import atomic_path

    with atomic_path(out / FLAT_FILE) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for t in tasks:
            for row in t.to_rows(task_id=t.extra.get("id"), round=t.extra.get("round")):
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
