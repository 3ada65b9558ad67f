"""A diversity report on generated tasks, after the Self-Instruct paper's analysis (its section 3).

- ROUGE-L F1 of each generated instruction with its most similar seed instruction;
- word counts of instructions, non-empty inputs and outputs;
- the most common leading verbs and their objects.

Self-Instruct found verbs and objects with a constituency parser. No parser model
can be downloaded here, so this report uses a stated heuristic (see `leading_verb`):
the first word of an imperative instruction is its verb, and the first word after it
that is not a determiner, pronoun, quantifier or common adjective is its object
(none when a preposition, conjunction or question word comes first).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.generation.rouge import RougeLIndex
from instructmining.generation.seeds import Task

HEURISTIC = (
    "leading verb = the instruction's first word (after 'please', 'now', 'then'), "
    "unless it is a question word, pronoun, determiner, preposition or auxiliary "
    "(then the instruction is counted as 'not imperative'); object = the next word "
    "that is not a determiner, pronoun, quantifier or common adjective, unless a "
    "preposition, conjunction or question word comes first (then none). No parser."
)

_LEAD_SKIP = frozenset({"please", "now", "then", "also", "kindly", "next"})


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_NOT_VERB = _wordset(
    """what which who whom whose when where why how is are was were am do does did can could
    will would should shall may might must have has had i you he she it we they this that these
    those there here a an the in on at for from of to by with without if as given based my your
    our their its his her suppose imagine assume according"""
)
_NOT_OBJECT = _wordset(
    """a an the me us him her them it this that these those some any my your our their its his
    following given each every all one two three four five few several many new short brief
    simple good different creative possible more most other another same such up out down"""
)
# a preposition, conjunction or question word before any noun: no direct object
_END_OBJECT = _wordset(
    """about into for of to with on in at from by and or how what why when where which who
    whom whether if"""
)
_WORD = re.compile(r"[a-z][a-z'-]*")


def leading_verb(instruction: str) -> tuple[str | None, str | None]:
    """(verb, object) of an instruction by the heuristic above; (None, None) if not imperative."""
    words = _WORD.findall(instruction.lower())
    while words and words[0] in _LEAD_SKIP:
        words = words[1:]
    if not words or words[0] in _NOT_VERB:
        return None, None
    verb = words[0]
    for word in words[1:]:
        if word in _END_OBJECT:
            break
        if word not in _NOT_OBJECT:
            return verb, word
    return verb, None


def _word_count(text: str) -> int:
    return len(text.split())


def diversity_stats(
    tasks: Sequence[Task], seeds: Sequence[Task], *, top: int = 20
) -> dict[str, Any]:
    """The numbers behind the report (no files written)."""
    index = RougeLIndex(t.instruction for t in seeds)
    sims = np.array([index.max_score(t.instruction) for t in tasks], dtype=np.float64)
    instr_len = [_word_count(t.instruction) for t in tasks]
    input_len = [_word_count(i) for t in tasks for i, _ in t.instances if i.strip()]
    output_len = [_word_count(o) for t in tasks for _, o in t.instances]
    verbs: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    not_imperative = 0
    for t in tasks:
        verb, obj = leading_verb(t.instruction)
        if verb is None:
            not_imperative += 1
            continue
        verbs[verb] += 1
        if obj is not None:
            pairs[(verb, obj)] += 1

    def describe(values: Sequence[float] | np.ndarray) -> dict[str, float]:
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return {"count": 0}
        return {
            "count": int(arr.size),
            "mean": float(arr.mean()),
            "median": float(np.median(arr)),
            "min": float(arr.min()),
            "max": float(arr.max()),
        }

    return {
        "tasks": len(tasks),
        "instances": sum(len(t.instances) for t in tasks),
        "classification": sum(1 for t in tasks if t.is_classification),
        "similarity_to_seeds": describe(sims),
        "similarity_values": sims.tolist(),
        "instruction_words": describe(instr_len),
        "input_words": describe(input_len),
        "output_words": describe(output_len),
        "length_values": {"instruction": instr_len, "input": input_len, "output": output_len},
        "top_verbs": verbs.most_common(top),
        "top_verb_objects": [(v, o, c) for (v, o), c in pairs.most_common(top)],
        "objects_by_verb": {
            v: Counter({o: c for (pv, o), c in pairs.items() if pv == v}).most_common(4)
            for v, _ in verbs.most_common(top)
        },
        "distinct_verbs": len(verbs),
        "not_imperative": not_imperative,
        "verb_heuristic": HEURISTIC,
    }


def write_report(
    tasks: Sequence[Task], seeds: Sequence[Task], out_dir: str | Path, *, top: int = 20
) -> Path:
    """Write similarity.png, lengths.png, verbs.png and report.md into `out_dir`; returns report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from instructmining.writers import atomic_path, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = diversity_stats(tasks, seeds, top=top)

    def save(fig: Any, name: str) -> None:
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(
        s["similarity_values"], bins=[i / 20 for i in range(21)], color="#4c72b0", edgecolor="white"
    )
    ax.set_xlabel("ROUGE-L F1 with the most similar seed instruction")
    ax.set_ylabel("generated instructions")
    ax.set_title(f"Similarity to the {len(seeds)} seeds ({len(tasks)} tasks)")
    save(fig, "similarity.png")

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, color in zip(
        axes, ("instruction", "input", "output"), ("#4c72b0", "#55a868", "#c44e52"), strict=True
    ):
        values = s["length_values"][key]
        if values:
            low, high = min(values), max(values)
            # whole-word bins when the range is small, 30 bins otherwise
            bins: Any = [b - 0.5 for b in range(low, high + 2)] if high - low <= 40 else 30
            ax.hist(values, bins=bins, color=color, edgecolor="white")
        ax.set_title(f"{key} ({len(values)}{', non-empty' if key == 'input' else ''})")
        ax.set_xlabel("words")
    axes[0].set_ylabel("count")
    save(fig, "lengths.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(3.0, 0.28 * top)))
    fig.subplots_adjust(wspace=0.55)  # room for the verb → object labels
    verbs = s["top_verbs"][::-1]
    ax1.barh([v for v, _ in verbs], [c for _, c in verbs], color="#4c72b0")
    ax1.set_title("most common leading verbs")
    pairs = s["top_verb_objects"][::-1]
    ax2.barh([f"{v} → {o}" for v, o, _ in pairs], [c for *_, c in pairs], color="#8172b2")
    ax2.set_title("most common verb → object")
    fig.text(
        0.01,
        -0.02,
        "verbs and objects: first-word heuristic, no parser (see report.md)",
        fontsize=8,
    )
    save(fig, "verbs.png")

    def row(name: str, d: dict[str, float]) -> str:
        if not d.get("count"):
            return f"| {name} | 0 | | | | |"
        return f"| {name} | {d['count']} | {d['mean']:.2f} | {d['median']:.2f} | {d['min']:.2f} | {d['max']:.2f} |"

    lines = [
        "# Diversity of the generated tasks",
        "",
        f"{s['tasks']} tasks ({s['classification']} classification), {s['instances']} instances; "
        f"{len(seeds)} seed tasks.",
        "",
        "| quantity | count | mean | median | min | max |",
        "|---|---|---|---|---|---|",
        row("ROUGE-L F1 with the closest seed", s["similarity_to_seeds"]),
        row("instruction words", s["instruction_words"]),
        row("input words (non-empty inputs)", s["input_words"]),
        row("output words", s["output_words"]),
        "",
        "![similarity](similarity.png)",
        "",
        "![lengths](lengths.png)",
        "",
        f"## Leading verbs ({s['distinct_verbs']} distinct; {s['not_imperative']} instructions not imperative)",
        "",
        f"How: {HEURISTIC}",
        "",
        "| verb | tasks | top objects |",
        "|---|---|---|",
    ]
    for v, c in s["top_verbs"]:
        objects = ", ".join(f"{o} ({k})" for o, k in s["objects_by_verb"].get(v, []))
        lines.append(f"| {v} | {c} | {objects} |")
    lines += ["", "![verbs](verbs.png)", ""]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    summary = {k: v for k, v in s.items() if k not in ("similarity_values", "length_values")}
    write_json(summary, out / "report.json")
    return report
