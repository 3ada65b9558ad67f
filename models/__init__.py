"""Model backends: where a named model comes from and how it is loaded, in one place.

`catalogue` names the models the tool knows (packaged artefacts, hub ids) and
resolves a name to a local folder; `loading` checks a checkpoint before any
work, chooses device and dtype, and caches loaded models per process;
`causal` scores responses token by token under a causal LM; `embed` turns
texts into unit vectors. Indicators, the study and generation all load models
through here.
"""

if __name__ != "instructmining.models":  # the bare folder imported from the repository root
    raise ImportError(
        "Import this as instructmining.models (install the project: pip install -e .)."
    )
