"""Benchmark: recall of `instructmining check` on planted contamination, and `select --dedup`
on planted near-copies. The numbers in docs/curation.md come from this script.

Contamination: a copy of ../shared/data/pools/dolly_3k.json (in a temporary folder)
with 90 Self-Instruct user-oriented tasks inserted: 30 verbatim, 30 with a few words
changed (two in the instruction, one in the input, two in the output; synonyms, or
long words dropped when there are too few known ones), 30 reworded heavily (synonym
swaps throughout, clauses and sentences reordered, a sentence of the output dropped,
a preamble added to the instruction). The rewording is written here, deterministic.
`check` runs on that copy and on the clean pool (false positives).

Duplicates: 60 near-copies of dolly_3k records appended to another copy: 20 differing in
case, punctuation and spacing only, 20 with a few words changed, 20 with a sentence
dropped (or one added). `check --dedup` and `select --dedup --fraction 1` (without a
rule and with a rule preferring long outputs) run on it.

    python benchmarks/bench_curation.py [--grid] [--out result.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
EVAL = DATA / "eval" / "self_instruct_user_oriented_252.jsonl"
POOL = DATA / "pools" / "dolly_3k.json"
_PAIRS = (
    "write:compose give:provide make:create list:enumerate good:fine best:top help:assist "
    "use:employ show:display find:locate explain:describe tell:inform create:produce "
    "important:significant big:large small:little quick:fast easy:simple hard:difficult "
    "start:begin end:finish answer:reply question:query example:instance examples:instances "
    "sentence:phrase sentences:phrases words:terms word:term people:folks person:individual "
    "need:require want:wish get:obtain buy:purchase many:numerous often:frequently "
    "also:additionally about:regarding however:nevertheless because:since very:extremely "
    "new:novel following:subsequent given:provided text:passage article:piece story:tale "
    "job:position company:firm product:item products:items customer:client "
    "customers:clients happy:glad idea:notion ideas:notions way:manner ways:manners "
    "time:period suggest:recommend check:verify include:contain think:believe keep:retain "
    "try:attempt choose:select different:distinct same:identical each:every below:beneath "
    "using:employing provide:supply information:details describe:depict generate:produce "
    "summarize:condense user:visitor can:may could:might improve:enhance problem:issue "
    "problems:issues simple:plain first:initial last:final great:excellent better:superior"
)
SYNONYMS = dict(pair.split(":") for pair in _PAIRS.split())


def swap(text: str, rng: random.Random, limit: int | None) -> str:
    """Replace up to `limit` known words (all when None) by a synonym; drop long words if short."""
    tokens = re.split(r"(\W+)", text)
    spots = [i for i, t in enumerate(tokens) if t.lower() in SYNONYMS]
    if limit is not None:
        if len(spots) < limit:
            extra = [i for i, t in enumerate(tokens) if len(t) >= 6 and i not in spots]
            rng.shuffle(extra)
            for i in extra[: limit - len(spots)]:
                tokens[i] = ""
        rng.shuffle(spots)
        spots = spots[:limit]
    for i in spots:
        new = SYNONYMS[tokens[i].lower()]
        tokens[i] = new.capitalize() if tokens[i][0].isupper() else new
    return re.sub(r" {2,}", " ", "".join(tokens))


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def reword(text: str, rng: random.Random, drop: bool) -> str:
    """Synonyms everywhere, first two clauses of each sentence swapped, sentences reversed."""
    parts = sentences(swap(text, rng, None))
    if drop and len(parts) >= 3:
        del parts[rng.randrange(len(parts))]
    out = []
    for s in parts:
        clauses = s.split(", ")
        if len(clauses) >= 2:
            clauses[0], clauses[1] = clauses[1], clauses[0]
        out.append(", ".join(clauses))
    return " ".join(reversed(out))


def plant_eval(folder: Path) -> tuple[Path, dict[str, str]]:
    """dolly_3k with 90 planted eval tasks; returns the file and content id -> planted kind."""
    from instructmining.records import Record

    pool = json.loads(POOL.read_text())
    tasks = [json.loads(line) for line in EVAL.open()]
    planted: dict[str, str] = {}
    for n, t in enumerate(random.Random(0).sample(range(len(tasks)), 90)):
        task, kind, rng = tasks[t], ("verbatim", "light", "heavy")[n // 30], random.Random(1000 + n)
        inst = task["instances"][0]
        ins, inp, out = task["instruction"], inst.get("input") or "", inst["output"]
        if kind == "light":
            ins, inp, out = swap(ins, rng, 2), swap(inp, rng, 1) if inp else "", swap(out, rng, 2)
        elif kind == "heavy":
            ins = "Please do the following. " + reword(ins, rng, False)
            inp, out = reword(inp, rng, False) if inp else "", reword(out, rng, True)
        row = {"instruction": ins, "category": "planted", "input": inp, "output": out}
        pool.insert(rng.randrange(len(pool) + 1), row)
        planted[Record(ins, inp, out).id] = kind
    path = folder / "dolly_planted.json"
    path.write_text(json.dumps(pool, ensure_ascii=False))
    return path, planted


def plant_duplicates(folder: Path) -> tuple[Path, list[tuple[str, str, str]]]:
    """dolly_3k with 60 near-copies appended; returns the file and (kind, copy id, original id)."""
    from instructmining.records import Record

    pool = json.loads(POOL.read_text())
    rng = random.Random(7)
    candidates = [i for i, r in enumerate(pool) if 30 <= len(r["output"].split()) <= 300]
    pairs = []
    for n, i in enumerate(rng.sample(candidates, 60)):
        row, kind, r = dict(pool[i]), ("format", "words", "sentence")[n // 20], random.Random(n)
        if kind == "format":
            row["instruction"] = row["instruction"].upper().rstrip("?.") + " ?"
            row["output"] = re.sub(r"\s+", "  ", row["output"]).replace(",", " ,")
        elif kind == "words":
            row["instruction"] = swap(row["instruction"], r, 1)
            row["output"] = swap(row["output"], r, 2)
        else:
            parts = sentences(row["output"])
            if len(parts) >= 3:
                del parts[r.randrange(len(parts))]
            else:
                parts.append("I hope this helps.")
            row["output"] = " ".join(parts)
        orig = pool[i]
        copy_id = Record(row["instruction"], row["input"], row["output"]).id
        pairs.append((kind, copy_id, Record(orig["instruction"], orig["input"], orig["output"]).id))
        pool.append(row)
    path = folder / "dolly_dups.json"
    path.write_text(json.dumps(pool, ensure_ascii=False))
    return path, pairs


def cli(*args: object) -> tuple[int, str, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "instructmining.cli", *map(str, args), "-q"],
        capture_output=True,
        text=True,
    )
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def contamination(folder: Path, grid: bool) -> dict[str, object]:
    data, planted = plant_eval(folder)
    report = folder / "hits.csv"
    rc, _, seconds = cli("check", data, "--eval", EVAL, "--report", report)
    hits: dict[str, set[str]] = {}
    for row in csv.DictReader(report.open()):
        hits.setdefault(row["pool_id"], set()).add(row["kind"])
    result: dict[str, object] = {"exit_status": rc, "seconds": round(seconds, 1)}
    for kind in ("verbatim", "light", "heavy"):
        ids = [i for i, k in planted.items() if k == kind]
        result[kind] = {
            "planted": len(ids),
            "found": sum(i in hits for i in ids),
            **{m: sum(m in hits.get(i, ()) for i in ids) for m in ("exact", "ngram", "near")},
        }
    result["flagged_not_planted"] = sum(i not in planted for i in hits)
    rc_clean, out_clean, _ = cli("check", POOL, "--eval", EVAL)
    result["clean_pool"] = {"exit_status": rc_clean, "summary": out_clean.strip().splitlines()}
    if grid:
        result["grid"] = threshold_grid(data, planted)
    return result


def threshold_grid(data: Path, planted: dict[str, str]) -> list[dict[str, object]]:
    """Recall per planted kind and false positives on the clean pool, per setting."""
    from instructmining.readers import read_records
    from instructmining.selection.contamination import (
        ContaminationSettings,
        find_contamination,
        read_eval_files,
    )

    records = read_records(data).records
    clean = read_records(POOL).records
    ev = read_eval_files([EVAL])
    rows = []
    for label, settings in [
        ("ngram 13", ContaminationSettings(kinds=("ngram",))),
        ("ngram 8", ContaminationSettings(ngram=8, kinds=("ngram",))),
        *[
            (
                f"near {j} / {k}-word shingles",
                ContaminationSettings(jaccard=j, shingle=k, kinds=("near",)),
            )
            for k in (3, 5)
            for j in (0.3, 0.4, 0.5)
        ],
    ]:
        found = find_contamination(records, ev.records, settings=settings).contaminated
        flagged = {records[i].id for i in found}
        fp = len(find_contamination(clean, ev.records, settings=settings).contaminated)
        row: dict[str, object] = {"setting": label, "false_positives_clean": fp}
        for kind in ("verbatim", "light", "heavy"):
            row[kind] = sum(1 for i, k in planted.items() if k == kind and i in flagged)
        rows.append(row)
    return rows


def duplicates(folder: Path) -> dict[str, object]:
    from instructmining.readers import read_records

    data, pairs = plant_duplicates(folder)
    report = folder / "dups.csv"
    rc, out, seconds = cli("check", data, "--dedup", "--report", report)
    clusters: dict[str, set[str]] = {}
    for row in csv.DictReader(report.open()):
        clusters.setdefault(row["cluster"], set()).update([row["pool_id"], row["other_id"]])
    together = {k: 0 for k in ("format", "words", "sentence")}
    for kind, copy, orig in pairs:
        together[kind] += any(copy in m and orig in m for m in clusters.values())
    from instructmining.regression import Rule

    rule = folder / "longer.json"
    longer = Rule(
        name="longer-outputs",
        intercept=0.0,
        coefficients={"output_length": -0.001},
        indicators={"output_length": {"name": "output_length"}},
    )
    rule.write_text(json.dumps(longer.to_dict()))
    records = {r.id: r for r in read_records(data).records}
    result: dict[str, object] = {
        "exit_status": rc,
        "seconds": round(seconds, 1),
        "summary": out.strip().splitlines()[1:2],
        "pairs_in_one_cluster": together,
    }
    for name, extra in (("no rule", ["--strategy", "random"]), ("rule", ["--rule", rule])):
        subset = folder / f"subset-{name.replace(' ', '-')}.jsonl"
        rc_sel, said, _ = cli("select", data, *extra, "--fraction", "1", "--dedup", "-o", subset)
        kept = {r.id for r in read_records(subset).records}
        per_cluster = [len(m & kept) for m in clusters.values()]

        def best(members: set[str], by_rule: bool) -> str:
            if by_rule:
                return min(members, key=lambda i: (-len(records[i].output.split()), i))
            return min(members)

        result[f"select --dedup ({name})"] = {
            "exit_status": rc_sel,
            "line": [x for x in said.splitlines() if "duplicates" in x],
            "clusters_with_one_kept": sum(n == 1 for n in per_cluster),
            "clusters": len(per_cluster),
            "keeper_as_expected": sum(best(m, name == "rule") in kept for m in clusters.values()),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", action="store_true", help="Also measure other thresholds.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON here too.")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark reads the shared data sets")
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "contamination": contamination(Path(tmp), args.grid),
            "duplicates": duplicates(Path(tmp)),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
