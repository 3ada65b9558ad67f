"""The strategy registry: each strategy's choice on hand-made pools, kcenter, +diverse, plugins."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from instructmining.cli import main
from instructmining.errors import InstructMiningError, ParameterError
from instructmining.records import Record, make_record
from instructmining.regression import Rule
from instructmining.selection import select
from instructmining.selection import strategies as st
from instructmining.selection.strategies import Ranked, ScoredPool, parse

# --- hand-made pools ------------------------------------------------------------------------

IDS = ["e", "b", "d", "a", "c"]


def hand_pool(
    *,
    outputs: list[str] | None = None,
    seed: int = 0,
    rule: Rule | None = None,
    embeddings: np.ndarray | None = None,
    **columns: list[float],
) -> ScoredPool:
    """Five records with ids IDS (not in id order) and the given score columns."""
    outs = outputs or ["x"] * len(IDS)
    records = [make_record(f"task {i}", "", o, id=i) for i, o in zip(IDS, outs, strict=True)]
    frame = pd.DataFrame({"id": IDS, **columns})
    embedder = (lambda: embeddings) if embeddings is not None else None
    return ScoredPool(records, frame, rule, seed, embedder)


def chosen_ids(pool: ScoredPool, spec: str, k: int | None) -> list[str]:
    return [pool.ids[i] for i in parse(spec).choose(pool, k)]


def test_rule_takes_the_lowest_prediction_first_ties_by_id_nan_last():
    pool = hand_pool(predicted_log_loss=[0.3, 0.1, np.nan, 0.3, 0.2])
    assert chosen_ids(pool, "rule", 3) == ["b", "c", "a"]
    assert chosen_ids(pool, "rule", None) == ["b", "c", "a", "e", "d"]


def test_top_and_bottom_rank_by_one_indicator():
    pool = hand_pool(ifd=[0.5, 0.9, np.nan, 0.9, 0.1])
    assert chosen_ids(pool, "top:ifd", 3) == ["a", "b", "e"]
    assert chosen_ids(pool, "bottom:ifd", 3) == ["c", "e", "a"]
    assert parse("top:ifd").columns() == ("ifd",)
    with pytest.raises(ParameterError, match="no 'mtld' scores"):
        chosen_ids(pool, "top:mtld", 1)


def test_longest_takes_the_most_output_words_ties_by_id():
    pool = hand_pool(outputs=["one two", "one", "one two three", "one two", "w"])
    assert chosen_ids(pool, "longest", 3) == ["d", "a", "e"]


def test_random_is_a_hash_of_seed_and_id():
    expected = sorted(IDS, key=lambda i: hashlib.sha256(f"7:{i}".encode()).hexdigest())
    assert chosen_ids(hand_pool(seed=7), "random", 3) == expected[:3]
    assert chosen_ids(hand_pool(seed=8), "random", 5) != expected


def test_rule_in_range_swaps_to_stay_inside_the_fitted_range():
    # ranked e, b, d, a, c by the rule; the top 2 (values 0, 0) lie below the range [2, 10]
    config = {"output_length": {"name": "output_length"}}
    rule = Rule(
        name="ranged",
        intercept=0.0,
        coefficients={"output_length": 1.0},
        indicators=config,
        ranges={"output_length": {"min": 2.0, "mean": 5.0, "max": 10.0}},
    )
    pool = hand_pool(rule=rule, predicted_log_loss=[0, 1, 2, 3, 4], output_length=[0, 0, 1, 5, 3])
    # swap the lower-ranked 0 (b) for the best-ranked record that lifts the mean (a: 5)
    assert chosen_ids(pool, "rule-in-range", 2) == ["e", "a"]
    assert pool.notes["range_swaps"] == 1
    plain = Rule(
        name="plain", intercept=0.0, coefficients={"output_length": 1.0}, indicators=config
    )
    with pytest.raises(ParameterError, match=r"needs the rule's fitted range.*records none"):
        parse("rule-in-range").check(plain)


def test_kcenter_adds_the_record_farthest_from_the_chosen_ones():
    # one-dimensional points: e=0, b=1, d=10, a=11, c=5
    emb = np.array([[0.0], [1.0], [10.0], [11.0], [5.0]])
    ruled = hand_pool(embeddings=emb, predicted_log_loss=[0, 1, 2, 3, 4])  # best: e
    assert chosen_ids(ruled, "kcenter", 3) == ["e", "a", "c"]
    # no rule: the seeded random order's first record starts
    for seed in (0, 1, 2):
        start = sorted(IDS, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())[0]
        picked = chosen_ids(hand_pool(embeddings=emb, seed=seed), "kcenter", 2)
        assert picked[0] == start
        assert picked[1] == ("e" if start in ("d", "a") else "a")
    assert parse("kcenter").seed_matters(None) and not parse("kcenter").seed_matters(LONGER)


def test_diverse_walks_the_order_and_skips_near_copies():
    emb = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pool = hand_pool(embeddings=emb, predicted_log_loss=[0, 1, 2, 3, 4])  # e, b, d, a, c
    # b is a near copy of e (cos 0.99); a (cos 0.8 with d) is kept at 0.9, not at 0.7
    assert chosen_ids(pool, "rule+diverse:0.9", 3) == ["e", "d", "a"]
    assert pool.notes["rejected_for_diversity"] == 1
    assert chosen_ids(pool, "rule+diverse:0.7", None) == ["e", "d"]
    # the rank column keeps the underlying strategy's order
    spec = parse("rule+diverse:0.9")
    assert [pool.ids[i] for i in spec.ranking(pool, spec.choose(pool, 3))] == IDS


# --- the registry and its grammar -----------------------------------------------------------


def test_names_parse_back_to_themselves():
    for spec in ("rule", "rule-in-range", "random", "longest", "top:ifd", "bottom:mtld"):
        assert parse(spec).name == spec
    assert parse(" kcenter+diverse:0.90 ").name == "kcenter+diverse:0.9"
    assert parse("top:ifd+diverse:0.9").columns() == ("ifd",)
    s = parse("random")
    assert (s.needs_rule, s.uses_rule, s.seeded, s.embeds) == (False, False, True, False)
    s = parse("kcenter")
    assert (s.needs_rule, s.uses_rule, s.embeds) == (False, True, True)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "best",
            "unknown strategy 'best'; choose from rule, rule-in-range, random, longest, "
            "top:IND, bottom:IND, kcenter",
        ),
        ("top", "strategy 'top' takes IND: write top:IND"),
        ("kcenter:5", "strategy 'kcenter' takes no ':' argument"),
        ("rule+diverse:1.5", r"must be a cosine in \(0, 1\]"),
        ("rule+unique", "unknown step 'unique'"),
        ("rule-in-range+diverse:0.9", "does not combine with \\+diverse:COS"),
    ],
)
def test_bad_names_are_one_line_errors(spec, message):
    with pytest.raises(ParameterError, match=message) as info:
        parse(spec, option="--strategy")
    assert str(info.value).startswith("--strategy: ") and "\n" not in str(info.value)


def test_unknown_strategy_on_the_command_line(tmp_path):
    data = write_pool(tmp_path / "pool.jsonl", clusters())
    result = CliRunner().invoke(
        main, ["select", str(data), "--strategy", "best", "-k", "2", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "--strategy: unknown strategy 'best'; choose from rule, " in result.output
    result = CliRunner().invoke(
        main, ["select", str(data), "--strategy", "rule-in-range", "-k", "2", "-o", "x.jsonl"]
    )
    assert result.exit_code == 2 and "--strategy rule-in-range needs --rule" in result.output


# --- through select, on real text (TF-IDF + SVD embeddings of the lite profile) -------------

TOPICS = {
    "cook": ["whisk", "eggs", "sugar", "flour", "butter", "bake", "oven", "batter", "cake"],
    "star": ["telescope", "planet", "moon", "galaxy", "orbit", "comet", "nebula", "stars"],
    "code": ["python", "function", "json", "parser", "compiler", "variable", "loop", "array"],
}


def clusters(per_topic: int = 5) -> list[Record]:
    """Three topics with disjoint vocabularies: three well-separated clusters."""
    rng = random.Random(0)
    out = []
    for topic, words in TOPICS.items():
        for i in range(per_topic):
            out.append(
                make_record(
                    " ".join(rng.sample(words, 4)),
                    "",
                    " ".join(rng.choices(words, k=6 + 3 * i)),
                    id=f"{topic}{i}",
                )
            )
    return out


def write_pool(path: Path, records: list[Record]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": r.id, "instruction": r.instruction, "output": r.output}) + "\n"
            for r in records
        )
    )
    return path


LONGER = Rule(
    name="longer",
    intercept=0.5,
    coefficients={"output_length": -0.01},
    indicators={"output_length": {"name": "output_length"}},
)


def topic(record_id: str) -> str:
    return record_id[:4]


def test_kcenter_picks_one_record_per_cluster():
    records = clusters()
    for seed in range(4):
        sel = select(records, k=3, strategy="kcenter", seed=seed)
        assert sorted(topic(records[i].id) for i in sel.indices) == ["code", "cook", "star"]
    # with a rule it starts from the rule's best record (the longest output here)
    sel = select(records, LONGER, k=3, strategy="kcenter")
    assert records[sel.indices[0]].id == "code4"  # 18 words, the lowest id of three
    assert sorted(topic(records[i].id) for i in sel.indices) == ["code", "cook", "star"]
    assert sel.settings["strategy"] == "kcenter" and "predicted_loss" in sel.scores
    # the order of the input does not matter
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    again = select(shuffled, LONGER, k=3, strategy="kcenter")
    assert [shuffled[i].id for i in again.indices] == [records[i].id for i in sel.indices]


def test_diverse_re_ranking_drops_near_duplicates_of_kept_records():
    records = clusters()
    copies = [
        make_record(r.instruction, "", r.output + " " + r.output.split()[0], id=f"{r.id}-copy")
        for r in records
    ]
    pool = records + copies
    plain = select(pool, LONGER, k=6)
    assert any(pool[i].id.endswith("-copy") for i in plain.indices)  # copies rank high
    diverse = select(pool, LONGER, k=6, strategy="rule+diverse:0.9")
    kept = {pool[i].id for i in diverse.indices}
    assert not any(f"{i}-copy" in kept for i in kept)  # never a record and its copy
    assert diverse.rejected_for_diversity > 0
    assert list(diverse.indices) == list(select(pool, LONGER, k=6, diversity=0.9).indices)
    assert diverse.settings["diversity"] == 0.9
    # the re-ranking applies over any strategy
    longest = select(pool, k=6, strategy="longest+diverse:0.9")
    kept = {pool[i].id for i in longest.indices}
    assert not any(f"{i}-copy" in kept for i in kept)


def test_top_indicator_is_scored_for_select():
    records = clusters()
    sel = select(records, k=3, strategy="top:output_length")
    words = [len(records[i].output.split()) for i in sel.indices]
    assert words == sorted((len(r.output.split()) for r in records), reverse=True)[:3]
    assert "output_length" in sel.scores
    with pytest.raises(ParameterError, match="strategy 'top:sparkle': unknown indicator"):
        select(records, k=3, strategy="top:sparkle")


# --- plugins --------------------------------------------------------------------------------


class Alphabetical(Ranked):
    """A plugin's strategy: instructions in alphabetical order."""

    key = "alphabetical"
    summary = "instructions A to Z"

    def order(self, pool: ScoredPool) -> np.ndarray:
        return np.argsort([r.instruction for r in pool.records], kind="stable")


NOT_A_STRATEGY = object()


@pytest.fixture
def plugins(monkeypatch):
    """Fake entry points of the instructmining.strategies group, loaded afresh."""

    def install(**objects):
        eps = [
            importlib.metadata.EntryPoint(name, f"{__name__}:{attr}", st.ENTRY_POINT_GROUP)
            for name, attr in objects.items()
        ]
        real = importlib.metadata.entry_points

        def entry_points(**kwargs):
            if kwargs.get("group") == st.ENTRY_POINT_GROUP:
                return importlib.metadata.EntryPoints(eps)
            return real(**kwargs)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        monkeypatch.setattr(st, "_PLUGINS", {})
        monkeypatch.setattr(st, "_plugins_loaded", False)

    return install


def test_a_plugin_strategy_is_usable_from_select(plugins, tmp_path):
    plugins(alphabetical="Alphabetical")
    assert "alphabetical" in st.choices()
    records = clusters()
    data = write_pool(tmp_path / "pool.jsonl", records)
    out = tmp_path / "sub.jsonl"
    result = CliRunner().invoke(
        main, ["select", str(data), "--strategy", "alphabetical", "-k", "2", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    got = [json.loads(line)["instruction"] for line in out.read_text().splitlines()]
    assert got == sorted(r.instruction for r in records)[:2]
    meta = json.loads((tmp_path / "sub.jsonl.selection.json").read_text())
    assert meta["settings"]["strategy"] == "alphabetical"
    sel = select(records, k=2, strategy="alphabetical+diverse:0.99")
    assert len(sel.indices) == 2


def test_a_broken_plugin_is_one_line(plugins):
    plugins(broken="NOT_A_STRATEGY")
    with pytest.raises(InstructMiningError, match=r"is not a selection\.strategies\.Strategy") as e:
        parse("broken")
    assert "\n" not in str(e.value)


def test_built_in_names_never_scan_entry_points(monkeypatch):
    monkeypatch.setattr(st, "_plugins_loaded", False)
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **kw: pytest.fail("entry points scanned")
    )
    for spec in ("rule", "top:ifd", "kcenter+diverse:0.9"):
        parse(spec)


def test_a_plugin_cannot_take_a_built_in_key():
    class Impostor(Alphabetical):
        key = "rule"

    with pytest.raises(ValueError, match="already registered"):
        st.register(Impostor)


def test_a_wrong_answer_from_a_strategy_is_refused():
    class Twice(Ranked):
        key = "twice"

        def order(self, pool: ScoredPool) -> np.ndarray:
            return np.zeros(len(pool), dtype=np.int64)

    with pytest.raises(InstructMiningError, match="strategy 'twice' returned 3 positions"):
        select(clusters(), k=3, strategy=Twice())


# --- study compare with top:ifd and kcenter (finetuning replaced by a stub) -----------------


def test_study_compare_runs_top_ifd_and_kcenter(tmp_path, monkeypatch, tiny_causal_lm):
    from study_helpers import alpaca_rows, write_eval, write_sources

    from instructmining.experiments.study import MANIFEST, create_study
    from instructmining.indicators.registry import create

    study = tmp_path / "study"
    create_study(
        study,
        sources=write_sources(tmp_path / "src"),
        eval_paths=write_eval(tmp_path / "eval"),
        n_mixtures=1,
        size=12,
        indicators=["input_length", "output_length"],
    )
    # ifd under the tiny causal LM joins the study's indicators (as a planned one would)
    manifest = json.loads((study / MANIFEST).read_text())
    manifest["indicators"].append(create("ifd", model=str(tiny_causal_lm)).params())
    (study / MANIFEST).write_text(json.dumps(manifest))
    seen: list[list[Record]] = []

    def stub(base, records, eval_records, settings, **kwargs):
        seen.append(list(records))
        return {"eval_loss": 2.0 + 0.01 * len(seen)}

    monkeypatch.setattr("instructmining.experiments.compare.train_and_evaluate", stub)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(20, offset=200)))
    rule = tmp_path / "rule.json"
    LONGER.save(rule)
    args = ["study", "compare", str(study), "--pool", str(pool), "--rule", str(rule)]
    args += ["--size", "4", "--seeds", "1", "--base-model", str(tiny_causal_lm)]
    result = CliRunner().invoke(main, [*args, "--strategies", "top:ifd,kcenter,random"])
    assert result.exit_code == 0, result.output
    assert "| top:ifd | 1 |" in result.output and "| kcenter | 1 |" in result.output
    assert [len(s) for s in seen] == [4, 4, 4]
    # kcenter starts from the rule's best record: the longest output
    best = min(seen[1] + seen[0] + seen[2], key=lambda r: (-len(r.output.split()), r.id))
    assert seen[1][0].id == best.id
    runs = pd.read_csv(next((study / "compare").glob("*/runs.csv")))
    means = runs.set_index("strategy")["subset_mean_ifd"]
    assert means["top:ifd"] >= max(means["kcenter"], means["random"])
    # an IND the study does not have is refused before any work
    result = CliRunner().invoke(main, [*args, "--strategies", "top:mtld,kcenter"])
    assert result.exit_code == 2 and "'mtld' is not an indicator of the study" in result.output


# --- the size search and the loop take a strategy -------------------------------------------


def length_study(tmp_path: Path) -> Path:
    """A one-mixture study scoring output_length only: enough for a size search's D_eval."""
    from study_helpers import write_eval, write_sources

    from instructmining.experiments.study import create_study

    study = tmp_path / "study"
    create_study(
        study,
        sources=write_sources(tmp_path / "src"),
        eval_paths=write_eval(tmp_path / "eval"),
        n_mixtures=1,
        size=12,
        indicators=["output_length"],
    )
    return study


def test_size_search_ranks_with_the_strategy_given(tmp_path, monkeypatch, tiny_causal_lm):
    from study_helpers import alpaca_rows

    from instructmining.experiments import runner
    from instructmining.experiments.size_search import size_search

    study = length_study(tmp_path)
    monkeypatch.setattr(
        "instructmining.experiments.size_search.train_and_evaluate",
        lambda base, records, *a, **k: {"eval_loss": 1.0 + abs(len(records) - 6)},
    )
    pool = [make_record(r["instruction"], r["input"], r["output"]) for r in alpaca_rows(20)]
    settings = runner.settings_for(str(tiny_causal_lm), max_length=64)
    found = size_search(
        study, pool, None, strategy="longest", budget=3, min_size=2, settings=settings
    )
    words = [len(r.output.split()) for r in found.ranked]
    assert words == sorted(words, reverse=True)
    with pytest.raises(ParameterError, match="needs the rule's fitted range"):
        size_search(study, pool, LONGER, strategy="rule-in-range", settings=settings)
    with pytest.raises(ParameterError, match="strategy 'rule' needs a rule"):
        size_search(study, pool, None, settings=settings)


def record_size_runs(monkeypatch) -> list[list]:
    """Replace a size search's finetuning: keep each subset; the loss is least at 6 records."""
    trained: list[list] = []

    def stub(base, records, *a, **k):
        trained.append(list(records))
        return {"eval_loss": 1.0 + abs(len(records) - 6)}

    monkeypatch.setattr("instructmining.experiments.size_search.train_and_evaluate", stub)
    return trained


def test_size_search_keeps_every_size_inside_the_fitted_range(tmp_path, monkeypatch):
    """rule-in-range is not nested: each size is chosen on its own, inside the range,
    and a size that cannot stay inside is left out of the curve, untrained."""
    from study_helpers import alpaca_rows

    study = length_study(tmp_path)
    rows = alpaca_rows(20)
    words = sorted(len(r["output"].split()) for r in rows)
    assert words[0] < words[-1]
    ceiling = float(np.mean(words[:10]))  # at most 10 records can average this little
    ranged = Rule(
        name="longer-ranged",
        intercept=0.5,
        coefficients={"output_length": -0.01},
        indicators={"output_length": {"name": "output_length"}},
        ranges={"output_length": {"min": 0.0, "mean": ceiling / 2, "max": ceiling}},
    )
    trained = record_size_runs(monkeypatch)
    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rule_file = tmp_path / "rule.json"
    ranged.save(rule_file)
    out = tmp_path / "best.jsonl"
    args = ["select", str(pool_file), "--rule", str(rule_file), "--size", "auto"]
    args += ["--study", str(study), "--budget", "5", "--min-size", "2", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--within-range"])
    assert result.exit_code == 0, result.output
    folder = next((study / "size_search").iterdir())
    search = json.loads((folder / "search.json").read_text())
    assert search["strategy"] == "rule-in-range"
    # the whole pool (less its D_eval overlap) averages above the ceiling: left out
    everything = search["range"][1]
    left_out = search["left_out_out_of_range"]
    assert everything in left_out
    for size in left_out:  # named, never trained, not on the curve
        assert f"size {size}: left out (no subset of it stays in the fitted range)" in (
            result.output
        )
    curve = pd.read_csv(folder / "curve.csv")
    assert sorted(len(s) for s in trained) == sorted(curve["size"].tolist())
    assert not set(left_out) & set(curve["size"])
    for subset in trained:  # every trained subset's mean inside the range
        assert np.mean([len(r.output.split()) for r in subset]) <= ceiling + 1e-9
    best = search["best_size"]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == best
    kept = json.loads((folder / "subsets" / f"size-{best}.json").read_text())
    assert len(kept) == best
    assert np.mean([len(r["output"].split()) for r in written]) <= ceiling + 1e-9
    # a plain rule's top s would leave the range: the search did choose differently
    top = sorted(rows, key=lambda r: -len(r["output"].split()))[:best]
    assert np.mean([len(r["output"].split()) for r in top]) > ceiling


def test_the_loop_selects_with_the_strategy_given(tmp_path):
    from generation_doubles import ScriptedBackend

    from instructmining.generation.loop import run_loop
    from instructmining.generation.seeds import Task

    seeds = [
        Task(text, (("", "an answer"),), False)
        for text in (
            "Give three tips for keeping a houseplant alive.",
            "Translate the greeting into French and Spanish.",
            "Summarize the paragraph in one sentence.",
            "Suggest a name for a cat that likes boxes.",
        )
    ]
    options = {"backend": ScriptedBackend(), "rule": LONGER, "rounds": 1, "per_round": 6}
    result = run_loop(seeds, tmp_path, keep=3, strategy="kcenter", **options)
    (row,) = result.rounds
    assert row["selected"] == 3 and row["mean_predicted_loss"] is not None
    state = json.loads((tmp_path / "loop_state.json").read_text())
    assert state["settings"]["strategy"] == "kcenter"
    with pytest.raises(InstructMiningError, match="differs in: strategy"):
        run_loop(seeds, tmp_path, keep=3, **{**options, "backend": ScriptedBackend()})
    with pytest.raises(ParameterError, match="unknown strategy 'best'"):
        run_loop(seeds, tmp_path / "other", keep=3, strategy="best", **options)


def test_size_search_cleans_the_pool_once_before_searching(tmp_path, monkeypatch):
    """--size auto with --exclude-eval and --dedup: every size comes from the same pool,
    without the eval overlap and with one record per duplicate cluster."""
    from study_helpers import alpaca_rows

    study = length_study(tmp_path)
    rows = alpaca_rows(20)
    # exact copies: three clusters of two (rows 0 and 1 are in the study's D_eval)
    twins = [dict(rows[i]) for i in (5, 6, 7)]
    leaked = {"instruction": "Name the capital of France.", "input": "", "output": "Paris is."}
    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *twins, leaked]))
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps(leaked) + "\n")
    trained = record_size_runs(monkeypatch)
    rule_file = tmp_path / "rule.json"
    LONGER.save(rule_file)
    out = tmp_path / "best.jsonl"
    args = ["select", str(pool_file), "--rule", str(rule_file), "--size", "auto"]
    args += ["--study", str(study), "--budget", "4", "--min-size", "2", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--exclude-eval", str(evals), "--dedup"])
    assert result.exit_code == 0, result.output
    assert "1 records dropped as overlapping the evaluation set" in result.output
    assert "3 records dropped as duplicates before the search" in result.output, result.output
    folder = next((study / "size_search").iterdir())
    search = json.loads((folder / "search.json").read_text())
    assert search["duplicates_dropped"] == 3 and search["range"][1] == 18, search  # 24 - 1 - 2 - 3
    seen = [r.instruction for subset in trained for r in subset]
    assert leaked["instruction"] not in seen
    for subset in trained:  # no size trains on both copies of a record
        assert len({(r.instruction, r.input, r.output) for r in subset}) == len(subset)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({json.dumps(r, sort_keys=True) for r in kept}) == len(kept)
