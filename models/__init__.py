"""Model backends: where a named model comes from and how it is loaded, in one place.

`catalogue` names the models the tool knows (packaged artefacts, hub ids) and
resolves a name to a local folder; `roles` types what indicators ask for (an
embedder, a token scorer, a pair scorer, a yes/no scorer, a causal LM);
`backends` reads a model string's scheme (`hf:`, `st:`, `gguf:`, `tfidf-svd`,
`ngram`, plugins) and loads its role; `loading` checks a checkpoint before any
work, is the one device/dtype policy and the per-process cache of loaded
models. `causal`, `embedder`, `reward` and `seq2seq` implement the roles.
Indicators, the study and generation all load models through here.
"""

if __name__ != "instructmining.models":  # the bare folder imported from the repository root
    raise ImportError(
        "Import this as instructmining.models (install the project: pip install -e .)."
    )
