"""Rank and subsample unseen records with a Rule (lower predicted loss is better)."""

if __name__ != "instructmining.selection":  # the bare folder imported from the repository root
    raise ImportError(
        "Import this as instructmining.selection (install the project: pip install -e .)."
    )
