"""Stepwise OLS of (log) evaluation loss on mean indicator values, giving a versioned Rule."""

if __name__ != "instructmining.regression":  # the bare folder imported from the repository root
    raise ImportError(
        "Import this as instructmining.regression (install the project: pip install -e .)."
    )

from instructmining.regression.builtin import (
    BUILTIN_RULES,
    RuleNotFoundError,
    builtin_rule,
    load_rule,
)
from instructmining.regression.fit import FitResult, fit_rule
from instructmining.regression.rule import SCHEMA_VERSION, Rule
from instructmining.regression.stepwise import Selection, Step, select_features
from instructmining.regression.table import FitWarning, prepare_table, read_table

__all__ = [
    "BUILTIN_RULES",
    "SCHEMA_VERSION",
    "FitResult",
    "FitWarning",
    "Rule",
    "RuleNotFoundError",
    "Selection",
    "Step",
    "builtin_rule",
    "fit_rule",
    "load_rule",
    "prepare_table",
    "read_table",
    "select_features",
]
