"""Stepwise OLS of (log) evaluation loss on mean indicator values, giving a versioned Rule."""

if __name__ != "instructmining.regression":  # the bare folder imported from the repository root
    raise ImportError(
        "Import this as instructmining.regression (install the project: pip install -e .)."
    )
