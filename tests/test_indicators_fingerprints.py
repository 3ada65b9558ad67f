"""Score-cache identities are pinned: a refactor that changes one orphans every stored score.

A cached score is found by its indicator's `key()` (a hash of `params()`) and
`fingerprints()` (files it reads). The values below are those of the commit that
introduced model schemes; change them only together with a `version` bump.
"""

from __future__ import annotations

import json

import pytest

from instructmining.indicators import profiles
from instructmining.indicators.registry import create

# name -> (key(), fingerprints()) per profile, with dtype "auto" resolved to fp32
PINNED = {
    "local": {
        "input_length": ("1bbfec9664b69516", {}),
        "output_length": ("35961c385672afc8", {}),
        "mtld": ("1628681418154e13", {}),
        "knn6": ("2a99dc0f9d4f51ac", {"model": "0872f5d7d0e806c4"}),
        "perplexity": ("0c1647edc9da9b76", {"model": "b179c9523d0e6a0f"}),
        "ifd": ("6eeabbd870b2da1c", {"model": "b179c9523d0e6a0f"}),
    },
    "lite": {
        "input_length": ("1bbfec9664b69516", {}),
        "output_length": ("35961c385672afc8", {}),
        "mtld": ("1628681418154e13", {}),
        "knn6": ("3d9c249f1276a229", {}),
        "perplexity": ("b962e1036804efeb", {}),
    },
    "paper": {
        "input_length": ("1bbfec9664b69516", {}),
        "output_length": ("35961c385672afc8", {}),
        "mtld": ("1628681418154e13", {}),
        "knn6": ("e7b182e94d4e9d82", {}),
        "perplexity": ("6daa3e6bb0ec9b62", {}),
        "reward": ("0901151af0056f3a", {}),
        "naturalness": ("137eceeefbc8dbcd", {}),
        "coherence": ("919989885a92a4c3", {}),
        "understandability": ("66366936278559bd", {}),
    },
}
LOCAL_PARAMS = {
    "knn6": {
        "backend": "sentence-transformers",
        "dtype": "fp32",
        "k": 6,
        "max_length": None,
        "model": "all-minilm-l6-v2",
        "name": "knn6",
        "reference": None,
        "version": 1,
    },
    "perplexity": {
        "backend": "causal-lm",
        "dtype": "fp32",
        "max_length": 1024,
        "model": "smollm2-135m-instruct",
        "name": "perplexity",
        "template": "auto",
        "version": 1,
    },
}


@pytest.fixture(autouse=True)
def fp32_everywhere(monkeypatch, tmp_path):
    """dtype "auto" means fp32 (as on a CPU without bf16 units); no stray relative paths."""
    monkeypatch.setattr("instructmining.models.loading.bf16_supported", lambda device: False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("profile", sorted(PINNED))
def test_profile_keys_and_fingerprints_are_pinned(profile):
    plan = profiles.build(profile, check_models=False)
    got = {ind.name: (ind.key(), ind.fingerprints()) for ind in plan.indicators}
    assert got == PINNED[profile]


def test_local_params_are_pinned():
    plan = profiles.build("local", check_models=False)
    params = {ind.name: ind.params() for ind in plan.indicators}
    for name, expected in LOCAL_PARAMS.items():
        assert json.dumps(params[name], sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert params["ifd"] == {**LOCAL_PARAMS["perplexity"], "name": "ifd"}


def test_default_model_indicators_keep_their_keys():
    assert create("knn6", model="all-minilm-l6-v2").key() == PINNED["local"]["knn6"][0]
    assert create("reward").key() == PINNED["paper"]["reward"][0]
    for name in ("naturalness", "coherence", "understandability"):
        assert create(name).key() == PINNED["paper"][name][0]


def test_a_scheme_prefix_keeps_the_file_fingerprint(tmp_path):
    """`hf:PATH` and `gguf:PATH` fingerprint the file the bare path would."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    bare = create("perplexity", model=str(folder)).fingerprints()
    assert bare and create("perplexity", model=f"hf:{folder}").fingerprints() == bare
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert create("ifd", model=f"gguf:{gguf}").fingerprints() == {
        "model": create("ifd", model=str(gguf)).fingerprints()["model"]
    }
