"""Shared test settings: never reach the network; locate the optional shared data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tiny models spend more time synchronising threads than computing on 2 busy cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The default profile is `local` wherever the packaged models are installed; tests
# that do not name a profile get the seconds-fast one (tests of the default unset it).
os.environ.setdefault("INSTRUCTMINING_PROFILE", "lite")
# Command tests must not write the default score cache (./.instructmining) of the checkout.
os.environ.setdefault("INSTRUCTMINING_CACHE", str(Path(tempfile.mkdtemp()) / "cache.sqlite"))

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The public data sets beside the repository; the test is skipped without them."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


# Tiny random-weight checkpoints (tests/tiny_models.py), built once per session.
@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny GPT-2 causal LM with its tokenizer."""
    from tiny_models import build_causal_lm

    return build_causal_lm(tmp_path_factory.mktemp("models") / "causal-lm")


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny GPT-NeoX reward model (one-output sequence classifier, OASST tokens)."""
    from tiny_models import build_reward_model

    return build_reward_model(tmp_path_factory.mktemp("models") / "reward-model")


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny T5 with "Yes"/"No" tokens (UniEval stand-in)."""
    from tiny_models import build_t5

    return build_t5(tmp_path_factory.mktemp("models") / "t5")


@pytest.fixture(scope="session")
def tiny_sentence_transformer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny BERT sentence-transformer (mean pooling, normalised)."""
    from tiny_models import build_sentence_transformer

    return build_sentence_transformer(tmp_path_factory.mktemp("models") / "sentence-transformer")
