"""Quality indicators: one small class per indicator, a registry, and the scoring engine."""

if __name__ != "instructmining.indicators":  # the bare folder imported from the repository root
    raise ImportError(
        "Import this as instructmining.indicators (install the project: pip install -e .)."
    )
