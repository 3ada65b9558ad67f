"""Self-Instruct generation whose machine pool is fed by selected data."""

if __name__ != "instructmining.generation":  # the bare folder imported from the repository root
    raise ImportError(
        "Import this as instructmining.generation (install the project: pip install -e .)."
    )
