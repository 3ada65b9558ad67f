"""Contamination and duplicate checks: `instructmining check`, select --exclude-eval/--dedup,
study plan --exclude-eval. All data is written here (tiny, synthetic)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from study_helpers import alpaca_rows, write_eval, write_sources

from instructmining.cli.app import main
from instructmining.errors import ParameterError
from instructmining.evalsets import build_eval_set
from instructmining.experiments.study import Study, create_study
from instructmining.records import Record, make_record
from instructmining.regression import Rule
from instructmining.selection import select
from instructmining.selection.contamination import (
    ContaminationSettings,
    find_contamination,
    remove_prompt_overlap,
)
from instructmining.selection.dedup import (
    DedupSettings,
    find_duplicates,
    keepers,
    knn6_embeddings,
)
from instructmining.selection.textnorm import normalize, shingles, words

EVAL_TASKS = [
    (
        "photo",
        "Rewrite the following paragraph so that a ten year old child could understand "
        "every sentence of it.",
        "Photosynthesis is the process by which green plants use sunlight, water and carbon "
        "dioxide to make their own food and release oxygen into the air.",
        "Plants make their food from sunlight, water and air, and they give off the oxygen "
        "we breathe.",
    ),
    (
        "sky",
        "Explain why the sky looks blue on a clear day.",
        "",
        "Sunlight is scattered by the molecules in the air, and blue light is scattered much "
        "more than red light, so the sky looks blue from every direction you look.",
    ),
    ("arctic", "List four animals that live in the cold Arctic ocean.", "", "Seals, walruses."),
    ("hello", "Translate good morning into French.", "", "Bonjour."),
]
SKY = EVAL_TASKS[1][3]
PHOTO_INPUT = EVAL_TASKS[0][2]
NOISE = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
]


def eval_records() -> list[Record]:
    return [make_record(i, x, o, id=rid) for rid, i, x, o in EVAL_TASKS]


def write_eval_file(path: Path) -> Path:
    """The eval tasks in the Self-Instruct user-oriented layout."""
    rows = [
        {
            "id": rid,
            "motivation_app": "t",
            "instruction": i,
            "instances": [{"input": x, "output": o}],
        }
        for rid, i, x, o in EVAL_TASKS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def clean_pool(n: int = 30, seed: int = 0) -> list[Record]:
    rng = random.Random(seed)
    return [
        make_record(
            " ".join(rng.choices(NOISE, k=rng.randint(3, 8))) + f" task {i}",
            "",
            " ".join(rng.choices(NOISE, k=rng.randint(5, 30))),
        )
        for i in range(n)
    ]


def planted() -> dict[str, Record]:
    """One record per kind of contamination, each overlapping one eval task."""
    return {
        "exact": make_record(
            "EXPLAIN  why the sky looks blue, on a clear day!!", "", "Because of scattering."
        ),
        "ngram": make_record(
            "Summarise this text for a school newsletter.",
            "Our class learned that photosynthesis is the process by which green plants use "
            "sunlight, water and carbon dioxide to make their own food. We planted seeds too.",
            "We learned how plants feed themselves.",
        ),
        "near": make_record("Why is the sky blue?", "", SKY.replace("molecules", "particles")),
    }


def kinds_found(record: Record, **settings) -> set[str]:
    report = find_contamination(
        [record], eval_records(), settings=ContaminationSettings(**settings)
    )
    return {m.kind for m in report.matches}


# --- normalisation -------------------------------------------------------------------------


def test_normalize_folds_case_unicode_forms_punctuation_and_spacing() -> None:
    assert normalize("  Hello,\tWORLD!!  It’s  ﬁne — Ｆｕｌｌ_width ") == (
        "hello world it s fine full width"
    )
    assert normalize("Straße") == normalize("STRASSE")
    assert normalize("नमस्ते दुनिया") == "नमस्ते दुनिया"  # combining marks stay inside words
    assert normalize("?!...") == ""


def test_shingles_of_a_short_text_are_the_whole_text() -> None:
    assert shingles(words("one two three"), 5) == {"one two three"}
    assert shingles(words("a b c d e f"), 5) == {"a b c d e", "b c d e f"}
    assert shingles([], 5) == set()


# --- each kind of match, found and not found ---------------------------------------------


def test_exact_match_is_found_up_to_case_and_punctuation_only() -> None:
    assert "exact" in kinds_found(planted()["exact"], kinds=("exact",))
    other = make_record("Explain why the sea looks blue on a clear day.", "", "x")
    assert kinds_found(other, kinds=("exact",)) == set()


def test_ngram_overlap_needs_a_whole_n_gram() -> None:
    record = planted()["ngram"]
    assert kinds_found(record) == {"ngram"}
    # the record shares a run of 21 words with the eval input; 12 of them are not enough
    twelve = " ".join(words(PHOTO_INPUT)[:12])
    short = make_record("Summarise.", f"Notes: {twelve}. Then something else entirely.", "ok")
    assert kinds_found(short, kinds=("ngram",)) == set()
    assert kinds_found(short, kinds=("ngram",), ngram=12) == {"ngram"}


def test_short_eval_prompt_copied_into_a_record_is_an_ngram_match() -> None:
    record = make_record(
        "Please list four animals that live in the cold arctic ocean, with a fact about each.",
        "",
        "Polar bears hunt seals.",
    )
    only_ngrams = ContaminationSettings(kinds=("ngram",))
    report = find_contamination([record], eval_records(), settings=only_ngrams)
    assert [(m.eval_id, m.field, m.shared) for m in report.matches] == [("arctic", "prompt", 1)]
    # below min_words (8) a short eval prompt is left to the exact and near checks
    hello = make_record("Translate good morning into French, please, and explain.", "", "x")
    assert kinds_found(hello, kinds=("ngram",)) == set()


def test_near_match_scores_the_jaccard_similarity() -> None:
    report = find_contamination([planted()["near"]], eval_records())
    near = [m for m in report.matches if m.kind == "near"]
    assert near and {m.eval_id for m in near} == {"sky"}
    assert all(0.4 <= m.score < 1.0 for m in near)
    scrambled = " ".join(w if i % 3 else "zz" for i, w in enumerate(SKY.split()))
    assert kinds_found(make_record("Why?", "", scrambled), kinds=("near",)) == set()


def test_clean_records_match_nothing() -> None:
    report = find_contamination(clean_pool(), eval_records())
    assert report.matches == [] and report.contaminated == []


def test_bad_settings_name_the_option() -> None:
    with pytest.raises(ParameterError, match="--ngram"):
        ContaminationSettings(ngram=0)
    with pytest.raises(ParameterError, match="--jaccard"):
        ContaminationSettings(jaccard=1.5)
    with pytest.raises(ParameterError, match="--dedup-jaccard"):
        DedupSettings(jaccard=0)


def test_study_overlap_rule_is_the_exact_prompt_match() -> None:
    sources = {"s": [planted()["exact"], *clean_pool(3)]}
    kept, removed = remove_prompt_overlap(sources, eval_records())
    assert removed == {"s": 1} and len(kept["s"]) == 3


def test_vicuna_questions_without_answers_are_read_for_a_check(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "How do tides work?"}) + "\n")
    got = build_eval_set([questions], answers_required=False)
    assert [(r.id, r.output) for r in got.records] == [("vicuna-1", "")]
    assert got.origin == ["vicuna"]


# --- the check command ------------------------------------------------------------------------


def write_pool(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return path


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_check_exit_codes_and_report(tmp_path: Path) -> None:
    ev = write_eval_file(tmp_path / "eval.jsonl")
    clean = write_pool(tmp_path / "clean.jsonl", clean_pool())
    result = run("check", clean, "--eval", ev)
    assert result.exit_code == 0, result.output
    assert "0 records overlap" in result.output

    plants = planted()
    dirty = write_pool(tmp_path / "dirty.jsonl", [*clean_pool(), *plants.values()])
    report = tmp_path / "hits.csv"
    result = run("check", dirty, "--eval", ev, "--report", report)
    assert result.exit_code == 3, result.output
    assert "3 records overlap" in result.output
    assert "2 of 4 items matched" in result.output
    import pandas as pd

    rows = pd.read_csv(report)
    assert set(rows["pool_id"]) == {r.id for r in plants.values()}
    assert set(rows["kind"]) == {"exact", "ngram", "near"}
    assert {"pool_id", "eval_id", "eval_file", "kind", "field", "score"} <= set(rows.columns)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--eval", "missing.jsonl"], "--eval missing.jsonl: no such file"),
        (["--eval", "EVAL", "--ngram", "0"], "--ngram must be a whole number >= 1; got 0"),
        (["--eval", "EVAL", "--jaccard", "2"], "--jaccard must be in (0, 1]"),
        ([], "give --eval EVAL (repeatable) and/or --dedup"),
    ],
)
def test_check_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    ev = write_eval_file(tmp_path / "eval.jsonl")
    pool = write_pool(tmp_path / "pool.jsonl", clean_pool(5))
    result = run("check", pool, *[str(ev) if a == "EVAL" else a for a in args])
    assert result.exit_code == 2
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- select --exclude-eval ---------------------------------------------------------------------


def test_select_exclude_eval_drops_exactly_the_planted_records(tmp_path: Path) -> None:
    ev = write_eval_file(tmp_path / "eval.jsonl")
    plants = planted()
    records = clean_pool()
    for i, r in enumerate(plants.values()):
        records.insert(5 + 7 * i, r)
    data = write_pool(tmp_path / "pool.jsonl", records)
    out = tmp_path / "subset.jsonl"
    result = run(
        "select", data, "--strategy", "random", "--fraction", "1", "--exclude-eval", ev, "-o", out
    )
    assert result.exit_code == 0, result.output
    assert "3 records dropped as overlapping the evaluation set" in result.output
    kept = {json.loads(line)["id"] for line in out.read_text().splitlines()}
    assert kept == {r.id for r in records} - {r.id for r in plants.values()}
    info = json.loads((tmp_path / "subset.jsonl.selection.json").read_text())
    assert sorted(info["excluded_eval"]["dropped_ids"]) == sorted(r.id for r in plants.values())


# --- duplicates ---------------------------------------------------------------------------------

LONG = (
    "The river rises in the northern hills and runs for two hundred miles through farmland "
    "before it reaches the sea near the old harbour town."
)
OTHER = (
    "A good bread starter needs flour, water and patience; feed it every day and keep it in a "
    "warm corner of the kitchen until it bubbles."
)


def dup_pool() -> list[Record]:
    """Two planted clusters (an exact and a near copy of one record; a near copy of another)."""
    return [
        *clean_pool(12, seed=3),
        make_record("Describe the river.", "", LONG, id="r1"),
        make_record("Describe the river.", "", LONG + " Fish live in it.", id="r2"),
        make_record("DESCRIBE the river!", "", LONG.replace(",", " ,"), id="r3"),
        make_record("How do I keep a starter?", "", OTHER, id="s2"),
        make_record("How do I keep a starter?", "", OTHER.replace("warm", "cosy"), id="s1"),
    ]


def test_find_duplicates_clusters_exact_and_near_copies() -> None:
    records = dup_pool()
    report = find_duplicates(records)
    clusters = [sorted(records[i].id for i in c) for c in report.clusters]
    assert clusters == [["r1", "r2", "r3"], ["s1", "s2"]]
    assert report.n_duplicates == 3
    assert report.cluster_kinds() == [["exact", "near"], ["near"]]
    assert report.summary()["clusters"] == 2


def test_shared_context_with_different_answers_is_not_a_duplicate() -> None:
    context = " ".join([LONG, OTHER, LONG])
    a = make_record("Where does the river rise?", context, "In the northern hills.")
    b = make_record("How long is the river?", context, "Two hundred miles.")
    assert find_duplicates([a, b]).clusters == []
    assert len(find_duplicates([a, b], DedupSettings(output_jaccard=0)).clusters) == 1


def test_dedup_keeps_the_lowest_id_without_a_rule_whatever_the_input_order() -> None:
    records = dup_pool()
    for seed in (0, 1):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        chosen = select(shuffled, strategy="random", fraction=1.0, dedup=DedupSettings())
        kept = {r.id for r in chosen.subset(shuffled)}
        assert {"r1", "s1"} <= kept and not {"r2", "r3", "s2"} & kept
        assert chosen.duplicates_dropped == 3 and chosen.duplicate_clusters == 2
        dropped = chosen.scores.set_index("id")["duplicate_of"]
        assert dropped["r2"] == dropped["r3"] == "r1" and dropped["s2"] == "s1"


def test_dedup_keeps_the_best_by_the_rule() -> None:
    longer_is_better = Rule(
        name="longer",
        intercept=0.0,
        coefficients={"output_length": -0.01},
        indicators={"output_length": {"name": "output_length"}},
    )
    records = dup_pool()
    chosen = select(records, longer_is_better, fraction=1.0, dedup=DedupSettings())
    kept = {r.id for r in chosen.subset(records)}
    assert "r2" in kept and not {"r1", "r3"} & kept  # r2 has the longest output
    assert len(kept) == len(records) - 3
    # k counts the records left after dedup
    assert len(select(records, longer_is_better, k=len(records) - 3, dedup=DedupSettings()).indices)
    with pytest.raises(ParameterError, match="exceeds"):
        select(records, longer_is_better, k=len(records) - 2, dedup=DedupSettings())


def test_keepers_follow_the_given_order() -> None:
    records = dup_pool()
    cluster = [len(records) - 2, len(records) - 1]  # s2, s1
    assert keepers([cluster], records) == {cluster[0]: cluster[1]}  # lowest id: s1
    assert keepers([cluster], records, order=cluster) == {cluster[1]: cluster[0]}


def test_select_dedup_reports_the_dropped_count(tmp_path: Path) -> None:
    data = write_pool(tmp_path / "pool.jsonl", dup_pool())
    out = tmp_path / "subset.jsonl"
    result = run("select", data, "--strategy", "longest", "-k", "5", "--dedup", "-o", out)
    assert result.exit_code == 0, result.output
    assert "3 records dropped as duplicates (2 clusters, one kept of each)" in result.output
    result = run("check", data, "--dedup", "--report", tmp_path / "dups.jsonl")
    assert result.exit_code == 3
    assert "2 clusters holding 5 records; keeping one of each drops 3" in result.output
    rows = [json.loads(line) for line in (tmp_path / "dups.jsonl").read_text().splitlines()]
    assert {r["cluster"] for r in rows} == {1, 2} and {r["kind"] for r in rows} == {"exact", "near"}


def test_semantic_duplicates_in_the_offline_knn6_space(tmp_path: Path) -> None:
    """The same words in reverse order: cosine 1 in TF-IDF space, no shared shingle."""
    text = f"{LONG} {OTHER}"
    records = [
        *clean_pool(6, seed=5),
        make_record("Tell me two things.", "", text, id="x1"),
        make_record("Tell me two things.", "", " ".join(reversed(text.split())), id="x2"),
    ]
    assert find_duplicates(records).clusters == []
    emb = knn6_embeddings(records, profile="lite")
    report = find_duplicates(records, DedupSettings(semantic=0.99), embeddings=emb)
    assert [sorted(records[i].id for i in c) for c in report.clusters] == [["x1", "x2"]]
    assert report.cluster_kinds() == [["semantic"]]
    data = write_pool(tmp_path / "pool.jsonl", records)
    result = run("check", data, "--semantic", "0.99", "--profile", "lite")
    assert result.exit_code == 3 and "semantic 1" in result.output


# --- study plan --exclude-eval ------------------------------------------------------------------


def test_study_plan_exclude_eval_drops_contaminated_sources(tmp_path: Path) -> None:
    sources = write_sources(tmp_path / "src")
    evals = write_eval(tmp_path / "eval", overlap_with_alpaca=0)
    row = alpaca_rows(2)[1]
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        json.dumps({**row, "instruction": row["instruction"].upper().rstrip(".") + "!"}) + "\n"
    )
    report = create_study(
        tmp_path / "study",
        sources=sources,
        eval_paths=evals,
        exclude_eval=[extra],
        n_mixtures=2,
        size=10,
        indicators=["output_length"],
    )
    assert report.removed_overlap == {"alpaca": 0, "dolly": 0}
    assert report.contaminated == {"alpaca": 1, "dolly": 0}
    study = Study(tmp_path / "study")
    assert len(study.pool) == 60 - 1 + 40
    manifest = study.manifest
    assert manifest["sources"]["alpaca"]["removed_eval_contamination"] == 1
    assert manifest["exclude_eval"]["paths"] == [str(extra)]
    # a rebuilt pool drops the same record (its fingerprint is checked)
    (tmp_path / "study" / "pool.jsonl").unlink()
    assert len(Study(tmp_path / "study").pool) == 99
