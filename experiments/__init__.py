"""The finetuning study: plan candidate datasets, finetune, evaluate, record results."""

if __name__ != "instructmining.experiments":  # the bare folder imported from the repository root
    raise ImportError(
        "Import this as instructmining.experiments (install the project: pip install -e .)."
    )
