"""Rules this project fitted on its own studies: each refits from its committed table.

A shipped rule (`regression/rules/NAME.json`) names its study in its provenance;
`studies/<folder>/fit/results.csv` is the table `study fit` fitted it on. Refitting
that table with `instructmining fit` and the rule's recorded selection settings must
give the shipped coefficients, and the wheel must carry the rule. The verdict's
comparison on dolly_3k must keep choosing the subsets its runs trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructmining.cli.app import main
from instructmining.regression.builtin import BUILTIN_RULES, SHIPPED_RULES, builtin_rule

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in SHIPPED_RULES.glob("*.json"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_rule_refits_from_its_committed_table(name: str, tmp_path: Path) -> None:
    pytest.importorskip("statsmodels")
    rule = builtin_rule(name)
    assert name in BUILTIN_RULES and rule.name == name
    facts = rule.provenance["study"]
    table = REPO / "studies" / facts["folder"] / "fit" / "results.csv"
    assert table.is_file(), f"{name}: its study table {table} is not committed"
    chosen = rule.selection
    out = tmp_path / "refit.json"
    args = ["fit", str(table), "-o", str(out), "--name", name]
    args += ["--features", ",".join(chosen["candidates"]), "--method", chosen["method"]]
    if chosen["method"] == "stepwise":
        args += ["--direction", chosen["direction"], "--criterion", chosen["criterion"]]
        args += ["--enter", str(chosen["enter"]), "--remove", str(chosen["remove"])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    refit = json.loads(out.read_text())
    assert refit["coefficients"].keys() == rule.coefficients.keys()
    for term, value in rule.coefficients.items():
        assert refit["coefficients"][term] == pytest.approx(value, rel=1e-9, abs=1e-15)
    assert refit["intercept"] == pytest.approx(rule.intercept, rel=1e-9)
    # the card a user reads names where it came from, and the range it was fitted on
    assert rule.provenance["study"]["candidates"] == refit["statistics"]["n"]
    assert set(rule.ranges) == set(rule.coefficients)


# the verdict's comparison and the pool it was run on (`studies/smollm2-v1/verdict.sh`)
VERDICT = REPO / "studies" / "smollm2-v1" / "compare" / "c22ac0750b1a"
VERDICT_POOL = REPO.parent / "shared" / "data" / "pools" / "dolly_3k.json"


def test_the_verdict_subsets_are_what_selection_chooses_now() -> None:
    """A comparison resumed in a later session must train on the records its first runs did.

    Every kept subset of the verdict (`subsets/RUN.json`) is chosen again from dolly_3k
    with the study's committed score cache (no model runs): a change to the selection
    code that would alter the running verdict fails here, not in the middle of it.
    """
    import warnings

    from instructmining.experiments.compare import choose_subset, subset_file
    from instructmining.experiments.evalset import remove_overlap
    from instructmining.experiments.study import Study
    from instructmining.indicators.registry import from_params
    from instructmining.readers import read_records
    from instructmining.regression import load_rule

    if not VERDICT_POOL.is_file():
        pytest.skip(f"{VERDICT_POOL} is not here (../shared beside the repository)")
    study = Study(VERDICT.parent.parent)
    plan = json.loads((VERDICT / "summary.json").read_text())
    pool = read_records(VERDICT_POOL).records
    records = remove_overlap({"pool": list(pool)}, study.eval_records)[0]["pool"]
    assert len(records) == plan["pool"]
    rule = load_rule(str(study.path / "fit" / "rule.json"))
    indicators = [from_params(p) for p in study.indicator_params]
    kept = {p.name for p in (VERDICT / "subsets").glob("*.json")}
    checked = 0
    for strategy in plan["strategies"]:
        tag = "@e9698882" if strategy.startswith("rule") else ""  # the rule's digest
        for seed in range(plan["seeds"]):
            path = subset_file(VERDICT, f"{strategy}{tag}-seed{seed}")
            assert path.name in kept, path
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the plain rule leaves its fitted range
                chosen = choose_subset(
                    strategy,
                    records,
                    rule,
                    size=plan["size"],
                    seed=seed,
                    indicators=indicators,
                    cache=study.cache_dir,
                )
            assert [r.id for r in chosen] == json.loads(path.read_text()), path.name
            checked += 1
    assert checked == len(kept) == 25
