"""Planning the study: mixtures, univariate bins, D_eval, the study folder and `study plan`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from study_helpers import write_eval, write_sources

from instructmining.cli.app import main
from instructmining.errors import DataError, InstructMiningError
from instructmining.experiments.evalset import build_eval_set, remove_overlap
from instructmining.experiments.plan import (
    allocate,
    ids_hash,
    mixture_candidates,
    univariate_candidates,
)
from instructmining.experiments.study import Study, create_study
from instructmining.records import make_record

SOURCES = {"a": [f"a{i}" for i in range(50)], "b": [f"b{i}" for i in range(30)], "c": ["c0", "c1"]}


def test_mixtures_are_deterministic_for_a_seed() -> None:
    one = mixture_candidates(SOURCES, n=6, size=20, seed=3)
    two = mixture_candidates(SOURCES, n=6, size=20, seed=3)
    other = mixture_candidates(SOURCES, n=6, size=20, seed=4)
    assert [c.record_ids for c in one] == [c.record_ids for c in two]
    assert [c.info for c in one] == [c.info for c in two]
    assert [c.record_ids for c in one] != [c.record_ids for c in other]


def test_mixture_proportions_sum_to_one_and_counts_to_size() -> None:
    for cand in mixture_candidates(SOURCES, n=20, size=25, seed=0):
        props = cand.info["proportions"]
        assert sum(props.values()) == pytest.approx(1.0, abs=1e-12)
        assert all(p >= 0 for p in props.values())
        counts = cand.info["counts"]
        assert sum(counts.values()) == 25 == len(cand.record_ids)
        assert len(set(cand.record_ids)) == 25  # without replacement
        assert counts["c"] <= 2  # never more than a source holds
        for name, count in counts.items():
            assert sum(i.startswith(name) for i in cand.record_ids) == count


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5).filter(lambda w: sum(w) > 0),
    st.lists(st.integers(0, 40), min_size=5, max_size=5),
    st.integers(1, 60),
)
def test_allocate_respects_size_and_room(weights: list[float], avail: list[int], size: int) -> None:
    avail = avail[: len(weights)]
    if size > sum(avail):
        with pytest.raises(ValueError, match="records available"):
            allocate(np.array(weights), size, avail)
        return
    counts = allocate(np.array(weights) / sum(weights), size, avail)
    assert counts.sum() == size
    assert (counts <= np.array(avail)).all() and (counts >= 0).all()


def test_allocate_follows_proportions_when_there_is_room() -> None:
    assert allocate(np.array([0.5, 0.3, 0.2]), 10, [100, 100, 100]).tolist() == [5, 3, 2]


def test_univariate_bins_are_ordered_slices() -> None:
    ids = [f"r{i}" for i in range(100)]
    rng = np.random.default_rng(0)
    values = rng.normal(size=100)
    values[7] = np.nan
    cands = univariate_candidates(ids, values, indicator="x", bins=4, size=10, seed=0)
    assert len(cands) == 4
    value_of = dict(zip(ids, values, strict=True))
    highs = []
    for b, cand in enumerate(cands):
        vals = [value_of[i] for i in cand.record_ids]
        assert len(vals) == 10 and not np.isnan(vals).any()
        assert cand.info["bin"] == b
        assert cand.info["low"] <= min(vals) and max(vals) <= cand.info["high"]
        highs.append(max(vals))
        if b:
            assert min(vals) >= cands[b - 1].info["high"]
    again = univariate_candidates(ids, values, indicator="x", bins=4, size=10, seed=0)
    assert [c.record_ids for c in again] == [c.record_ids for c in cands]


def test_univariate_small_bins_use_every_record() -> None:
    cands = univariate_candidates(
        ["a", "b", "c", "d"], [4, 3, 2, 1], indicator="x", bins=2, size=5, seed=0
    )
    assert [c.record_ids for c in cands] == [("d", "c"), ("b", "a")]  # by value
    assert cands[0].info["n_records"] == 2


def test_candidate_id_is_a_content_hash() -> None:
    cand = mixture_candidates(SOURCES, n=1, size=5, seed=0)[0]
    assert cand.candidate_id == ids_hash(list(cand.record_ids))
    assert len(cand.candidate_id) == 16


def test_eval_set_joins_vicuna_and_reads_self_instruct(tmp_path: Path) -> None:
    paths = write_eval(tmp_path, overlap_with_alpaca=0)
    ev = build_eval_set(paths)
    assert len(ev.records) == 5 + 3
    vicuna = {r.id: r for r in ev.records if r.id.startswith("vicuna-")}
    assert vicuna["vicuna-3"].instruction == "How is small made?"
    assert vicuna["vicuna-3"].output.startswith("small is made")  # joined by question_id
    assert ev.parts["vicuna"] == 3


def test_eval_set_needs_the_answers(tmp_path: Path) -> None:
    si, questions, _ = write_eval(tmp_path)
    with pytest.raises(DataError, match="no answer"):
        build_eval_set([si, questions])


def test_eval_set_reads_plain_records(tmp_path: Path) -> None:
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    assert [r.output for r in build_eval_set([plain]).records] == ["Hi."]


def test_overlap_removal_matches_prompt_up_to_spacing() -> None:
    ev = [make_record("Add  2 and 3.", "", "5")]
    kept, removed = remove_overlap(
        {"s": [make_record("Add 2 and 3.", "", "five"), make_record("Add 2 and 4.", "", "6")]}, ev
    )
    assert removed == {"s": 1}
    assert [r.output for r in kept["s"]] == ["6"]


def test_create_study_writes_a_complete_folder(tmp_path: Path) -> None:
    sources = write_sources(tmp_path / "src")
    evals = write_eval(tmp_path / "eval", overlap_with_alpaca=2)
    report = create_study(
        tmp_path / "study",
        sources=sources,
        eval_paths=evals,
        n_mixtures=4,
        size=15,
        univariate=["output_length"],
        bins=3,
        seed=1,
        indicators=["input_length", "output_length"],
    )
    assert report.removed_overlap == {"alpaca": 2, "dolly": 0}
    study = Study(tmp_path / "study")
    assert len(study.pool) == 60 - 2 + 40
    assert len(study.eval_records) == 7 + 3
    kinds = [c["kind"] for c in study.candidates]
    assert kinds == ["mixture"] * 4 + ["univariate"] * 3
    for cand in study.candidates:
        recs = study.candidate_records(cand["candidate_id"])
        assert len(recs) == cand["n_records"] == 15
    eval_prompts = {r.instruction for r in study.eval_records}
    assert not any(r.instruction in eval_prompts and not r.input for r in study.pool.values())
    assert [p["name"] for p in study.indicator_params] == ["input_length", "output_length"]
    # the same plan again gives the same candidates
    create_study(
        tmp_path / "again",
        sources=sources,
        eval_paths=evals,
        n_mixtures=4,
        size=15,
        univariate=["output_length"],
        bins=3,
        seed=1,
        indicators=["input_length", "output_length"],
    )
    assert Study(tmp_path / "again").candidates == study.candidates
    with pytest.raises(InstructMiningError, match="--overwrite"):
        create_study(tmp_path / "study", sources=sources, eval_paths=evals, n_mixtures=1, size=5)


def test_create_study_refuses_a_size_larger_than_the_pool(tmp_path: Path) -> None:
    sources = write_sources(tmp_path / "src", n_alpaca=5, n_dolly=5)
    evals = write_eval(tmp_path / "eval", overlap_with_alpaca=0)
    with pytest.raises(InstructMiningError, match="--size 50"):
        create_study(tmp_path / "s", sources=sources, eval_paths=evals, n_mixtures=1, size=50)


def test_study_plan_command(tmp_path: Path) -> None:
    sources = write_sources(tmp_path / "src")
    evals = write_eval(tmp_path / "eval")
    args = ["study", "plan", "--n-mixtures", "3", "--size", "10", "--seed", "0", "-q"]
    args += [a for name, p in sources.items() for a in ("--source", f"{name}={p}")]
    args += [a for p in evals for a in ("--eval", str(p))]
    args += ["--univariate", "output_length", "--bins", "2", "-i", "output_length"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    assert "planned 5 candidates" in result.output
    assert "alpaca 2" in result.output
    again = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "st")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = CliRunner().invoke(main, [*args[:-2], "--source", "nonsense", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "NAME=PATH" in bad.output


def test_study_plan_sets_indicator_settings_and_checkpoints(tmp_path: Path) -> None:
    sources = write_sources(tmp_path / "src")
    evals = write_eval(tmp_path / "eval")
    args = ["study", "plan", "--n-mixtures", "2", "--size", "10", "--seed", "0", "-q"]
    args += [a for name, p in sources.items() for a in ("--source", f"{name}={p}")]
    args += [a for p in evals for a in ("--eval", str(p))]
    args += ["--profile", "lite", "-i", "mtld,perplexity"]
    result = CliRunner().invoke(
        main,
        [*args, "--set", "mtld.threshold=0.8", "--model", "perplexity=ngram", "-o", str(tmp_path / "st")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = {p["name"]: p for p in Study(tmp_path / "st").indicator_params}
    assert stored["mtld"]["threshold"] == 0.8  # in the manifest: every run scores with it
    assert stored["perplexity"]["backend"] == "ngram"
    # a setting for an indicator the study does not score, or a bad value, stops it first
    for extra, message in (
        (
            ["--set", "knn6.k=3"],
            "--set knn6.*: not among the study's indicators (mtld, perplexity)",
        ),
        (["--set", "mtld.threshold=two"], "setting 'threshold'"),
        (["--model", "bogus=/x"], "unknown key; choose from"),
    ):
        bad = CliRunner().invoke(main, [*args, *extra, "-o", str(tmp_path / "no")])
        assert bad.exit_code == 2 and message in bad.output, bad.output
        assert not (tmp_path / "no").exists()


def test_the_papers_eval_set_from_shared_data(shared_data: Path) -> None:
    ev = shared_data / "eval"
    built = build_eval_set(
        [
            ev / "self_instruct_user_oriented_252.jsonl",
            ev / "vicuna80_questions.jsonl",
            ev / "vicuna80_answers_gpt35.jsonl",
        ]
    )
    assert len(built.records) == 252 + 80
    assert built.parts["vicuna"] == 80
    assert all(r.output.strip() for r in built.records)
