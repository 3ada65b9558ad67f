"""The study's parallel engines (local process pool, Ray) and `study fit` on a results table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from study_helpers import write_eval, write_sources

from instructmining.cli.app import main
from instructmining.experiments import runner
from instructmining.experiments.store import ResultsStore
from instructmining.experiments.study import Study, create_study
from instructmining.experiments.tiny_base import TinyBaseConfig

SMALL: dict[str, Any] = {
    "max_length": 64,
    "epochs": 1,
    "batch_size": 8,
    "tiny": TinyBaseConfig(vocab_size=400, pretrain_examples=60),
}


def _study(tmp_path: Path, n: int = 3, size: int = 12) -> Path:
    create_study(
        tmp_path / "study",
        sources=write_sources(tmp_path / "src"),
        eval_paths=write_eval(tmp_path / "eval"),
        n_mixtures=n,
        size=size,
        seed=0,
        indicators=["input_length", "output_length"],
    )
    return tmp_path / "study"


def test_study_fit_writes_a_rule_from_the_results(tmp_path: Path) -> None:
    pytest.importorskip("statsmodels")
    study_dir = _study(tmp_path, n=12, size=10)
    study = Study(study_dir)
    store = ResultsStore(study.results_path)
    rng = np.random.default_rng(0)
    for cand in study.candidates:  # rows as a run writes them, loss driven by output_length
        recs = study.candidate_records(cand["candidate_id"])
        out_len = float(np.mean([len(r.output.split()) for r in recs]))
        in_len = float(np.mean([len(r.prompt.split()) for r in recs]))
        loss = float(np.exp(1.0 - 0.05 * out_len + rng.normal(0, 0.005)))
        store.record_done(
            cand["candidate_id"],
            {
                "candidate_id": cand["candidate_id"],
                "input_length": in_len,
                "output_length": out_len,
                "eval_loss": loss,
                "wall_s": 1.0,
            },
        )
    result = CliRunner().invoke(main, ["study", "fit", str(study_dir)])
    assert result.exit_code == 0, result.output
    assert "fitted on 12 candidates" in result.output
    from instructmining.regression import load_rule

    rule = load_rule(str(study_dir / "fit" / "rule.json"))
    assert "output_length" in rule.features
    assert rule.indicators["output_length"]["name"] == "output_length"
    facts = rule.provenance["study"]  # what a shipped rule's card names
    assert rule.name == f"study {study_dir.name}" and facts["folder"] == study_dir.name
    assert facts["candidates"] == 12 and facts["candidate_size"] == 10
    assert set(facts["sources"]) == set(study.manifest["sources"])
    assert facts["evaluation_set"]["records"] == study.manifest["eval"]["records"]
    assert f"Study {study_dir.name}: 12 candidate datasets of 10 records" in rule.notes
    card = rule.summary()  # what `rule show` prints
    assert "Fitted on:" in card and "candidates: 12 datasets of 10 records" in card
    assert f"study: {study_dir.name}" in card and "D_eval: " in card
    # study fit measures the selection's stability by default (200 bootstrap resamples)
    assert rule.statistics["bootstrap_resamples"] == 200
    assert "Chosen in bootstrap resamples of the rows (200 reruns" in card
    assert "## Selection stability" in (study_dir / "fit" / "report.md").read_text()
    assert (study_dir / "fit" / "report.md").exists()
    assert (study_dir / "fit" / "results.csv").exists()
    again = CliRunner().invoke(main, ["study", "fit", str(study_dir)])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_study_fit_adds_indicators_scored_on_the_finished_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("statsmodels")
    from instructmining.indicators.engine import score_records

    create_study(
        tmp_path / "study",
        sources=write_sources(tmp_path / "src"),
        eval_paths=write_eval(tmp_path / "eval"),
        n_mixtures=8,
        size=10,
        seed=0,
        indicators=["input_length", "perplexity"],
        profile="lite",
    )
    study_dir = tmp_path / "study"
    study = Study(study_dir)
    store = ResultsStore(study.results_path)
    want = {}
    for i, cand in enumerate(study.candidates):  # rows as a run writes them
        recs = study.candidate_records(cand["candidate_id"])
        ppl = score_records(recs, ["perplexity"], cache=study.cache_dir).columns["perplexity"]
        want[cand["candidate_id"]] = float(np.nanmean(np.log(ppl)))
        store.record_done(
            cand["candidate_id"],
            {
                "candidate_id": cand["candidate_id"],
                "input_length": float(np.mean([len(r.prompt.split()) for r in recs])),
                "perplexity": float(np.nanmean(ppl)),
                "eval_loss": float(np.exp(0.5 + 0.01 * i)),
                "wall_s": 1.0,
            },
        )
    bad = CliRunner().invoke(main, ["study", "fit", str(study_dir), "--add-indicators", "nope"])
    assert bad.exit_code == 2 and "no indicator 'nope'" in bad.output
    again = CliRunner().invoke(
        main, ["study", "fit", str(study_dir), "--add-indicators", "perplexity"]
    )
    assert again.exit_code == 2 and "one of the study's own indicators" in again.output
    unused = CliRunner().invoke(  # a hub id: checked by the loader, which never runs here
        main,
        ["study", "fit", str(study_dir), "--add-indicators", "log_perplexity",
         "--model", "reward=org/some-reward-model"],
    )  # fmt: skip
    assert unused.exit_code == 2 and "--model reward: only an indicator of" in unused.output
    assert not (study_dir / "fit").exists()  # refused before anything was written
    result = CliRunner().invoke(
        main,
        [
            "study", "fit", str(study_dir), "--add-indicators", "log_perplexity,output_length",
            "--name", "lite-v0",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(study_dir / "fit" / "results.csv")
    got = dict(zip(table["candidate_id"], table["log_perplexity"], strict=True))
    assert got == pytest.approx(want, rel=1e-12)  # perplexity's cached values, logged
    assert table["output_length"].notna().all()  # a non-derived one, scored afresh
    from instructmining.regression import load_rule

    rule = load_rule(str(study_dir / "fit" / "rule.json"))
    assert "Added at fit time (scored on the finished candidates): log_perplexity, " in rule.notes
    assert rule.name == "lite-v0"
    from instructmining.experiments.fitting import added_indicators

    stored = {p["name"]: p for p in study.indicator_params}["perplexity"]
    (derived,) = added_indicators(study, ["log_perplexity"])  # built with perplexity's settings
    assert {k: v for k, v in derived.params().items() if k != "name"} == {
        k: v for k, v in stored.items() if k not in ("name", "fingerprints")
    }

    # a plugin that derives from perplexity through the hook, without subclassing it,
    # gets the study's perplexity settings too; a --model for it is refused
    from instructmining.errors import ParameterError
    from instructmining.indicators import registry
    from instructmining.indicators.base import Indicator
    from instructmining.indicators.perplexity import Perplexity

    class Surprisal(Indicator):
        name = "surprisal_bits_test"

        def __init__(self, **settings: Any) -> None:
            for key, value in settings.items():
                setattr(self, key, value)

        def derived_from(self) -> Indicator:
            return Perplexity(**self.settings())

        def derive(self, values: np.ndarray) -> np.ndarray:
            return np.log2(values)

        def score(self, records: Any) -> np.ndarray:
            return self.derive(self.derived_from().score(records))

    monkeypatch.setitem(registry._REGISTRY, Surprisal.name, Surprisal)
    (plugin,) = added_indicators(study, [Surprisal.name])
    assert plugin.derived_from().params() == derived.derived_from().params()
    with pytest.raises(ParameterError, match="computed from the study's perplexity"):
        added_indicators(study, [Surprisal.name], {Surprisal.name: "org/other-model"})


def test_study_fit_needs_results(tmp_path: Path) -> None:
    study_dir = _study(tmp_path)
    result = CliRunner().invoke(main, ["study", "fit", str(study_dir)])
    assert result.exit_code == 1 and "no finished candidates" in result.output


@pytest.mark.slow
def test_local_pool_engine_matches_the_sequential_one(tmp_path: Path) -> None:
    seq = _study(tmp_path / "a")
    par = _study(tmp_path / "b")
    runner.run_study(seq, runner.settings_for("tiny", **SMALL))
    summary = runner.run_study(par, runner.settings_for("tiny", **SMALL), workers=2)
    assert len(summary.done) == 3
    a = ResultsStore(seq / "results.sqlite").table().set_index("candidate_id").sort_index()
    b = ResultsStore(par / "results.sqlite").table().set_index("candidate_id").sort_index()
    assert list(a.index) == list(b.index)
    # the tiny base is rebuilt in each study (tokenizer training is not reproducible
    # across processes), so the losses are close, not equal
    assert np.allclose(a["output_length"], b["output_length"])
    assert (b["eval_loss"] > 0).all()


@pytest.mark.slow
def test_ray_engine_runs_one_task_per_candidate(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    study_dir = _study(tmp_path)
    study = Study(study_dir)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        summary = runner.run_study(
            study_dir, runner.settings_for("tiny", **SMALL), engine="ray", cpus_per_task=1
        )
    finally:
        ray.shutdown()
    assert len(summary.done) == 3 and not summary.failed
    table = ResultsStore(study.results_path).table()
    assert set(table["candidate_id"]) == {c["candidate_id"] for c in study.candidates}
    assert (table["eval_loss"] > 0).all() and (table["wall_s"] > 0).all()
