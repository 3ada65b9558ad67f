"""Rank and subsample unseen records with a Rule (lower predicted loss is better)."""

if __name__ != "instructmining.selection":  # the bare folder imported from the repository root
    raise ImportError(
        "Import this as instructmining.selection (install the project: pip install -e .)."
    )

from instructmining.selection.ranges import FittedRangeWarning, RangeInfeasibleError
from instructmining.selection.run import SelectReport, select_file
from instructmining.selection.select import (
    MissingIndicatorError,
    Selection,
    rule_indicators,
    select,
)
from instructmining.selection.strategies import ScoredPool, Strategy

__all__ = [
    "FittedRangeWarning",
    "MissingIndicatorError",
    "RangeInfeasibleError",
    "ScoredPool",
    "SelectReport",
    "Selection",
    "Strategy",
    "rule_indicators",
    "select",
    "select_file",
]
