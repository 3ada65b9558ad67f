"""Rules this project fitted on its own studies: each refits from its committed table.

A shipped rule (`regression/rules/NAME.json`) names its study in its provenance;
`studies/<folder>/fit/results.csv` is the table `study fit` fitted it on. Refitting
that table with `instructmining fit` and the rule's recorded selection settings must
give the shipped coefficients, and the wheel must carry the rule.
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
