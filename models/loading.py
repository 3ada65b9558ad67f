"""Model loading shared by indicators, the study and generation.

Checkpoints are named by a catalogue name (`models/catalogue.py`), a Hugging
Face id or a local path. A path that does not
exist, or a hub id that is neither cached nor reachable, fails at once with the
checkpoint's name and the fix, instead of hanging for a minute inside
transformers. Loaded models and role objects are cached per process by their
`roles.LoadKey` (role, scheme, resolved source, dtype, device, load options),
so that two indicators reading the same model load it once. `resolve_device`
and `resolve_dtype` are the one device/dtype policy.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from instructmining.errors import InstructMiningError, ParameterError

if TYPE_CHECKING:
    from instructmining.models.roles import LoadKey

T = TypeVar("T")
_CACHE: dict[LoadKey, Any] = {}
# re-entrant: a loader may itself load (a scorer building on a shared model)
_LOCK = threading.RLock()


class ModelUnavailableError(InstructMiningError):
    """A checkpoint that cannot be loaded here (no local copy, no network)."""


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(spec: str) -> bool:
    # hub ids are "name" or "org/name"; anything else is meant as a path
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1


def hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return False
    hit = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(hit, str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout):
            return True
    except OSError:
        return False


def check_model_source(spec: str, *, indicator: str, option: str | None = None) -> str:
    """Return `spec` if it can be loaded here; otherwise fail fast saying how to fix it.

    `option` is the `--model` key that sets this checkpoint (default: the indicator name).
    """
    key = option or indicator
    path = Path(spec).expanduser()
    if path.exists():
        return str(path)
    from instructmining.models.catalogue import CatalogueError, resolve

    try:
        named = resolve(spec, progress=True)
    except CatalogueError as exc:
        raise ModelUnavailableError(f"{indicator}: {exc}") from exc
    key_name = spec
    if named is not None:
        if Path(named).exists():
            return named
        spec = named  # a hub id: checked below
    # `option` may name a whole flag (e.g. "--base-model") instead of a --model key
    flag = (
        f"{key} /path/to/checkpoint"
        if key.startswith("--")
        else f"--model {key}=/path/to/checkpoint"
    )
    fix = (
        f"pass a local copy with {flag}, or download it "
        "where there is network and set HF_HUB_OFFLINE=1 to use the cache"
    ) + _catalogue_hint(spec if named is None else key_name)
    if _looks_like_path(spec):
        raise ModelUnavailableError(f"{indicator}: checkpoint path {spec!r} does not exist; {fix}")
    if hub_cached(spec):
        return spec
    if _offline():
        raise ModelUnavailableError(
            f"{indicator}: checkpoint {spec!r} is not in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE is set; {fix}"
        )
    if not _hub_reachable():
        raise ModelUnavailableError(
            f"{indicator}: checkpoint {spec!r} is not cached locally and the Hugging Face hub "
            f"cannot be reached; {fix}"
        )
    return spec


def _catalogue_hint(name: str) -> str:
    """ "; did you mean X" for a near-miss of a catalogue name, and the packaged models
    of the same role for a hub-only catalogue entry ("" when neither applies)."""
    import difflib

    from instructmining.models.catalogue import CATALOGUE, entry

    e = entry(name)
    if e is not None and e.packaged is None:
        local = [o.name for o in CATALOGUE.values() if o.role == e.role and o.packaged]
        return f" (models of this kind that need no hub: {', '.join(local)})" if local else ""
    close = difflib.get_close_matches(name.lower(), list(CATALOGUE), n=1, cutoff=0.8)
    return f"; did you mean {close[0]}?" if close and e is None else ""


def resolve_device(device: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; 'cuda:N' is checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParameterError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ParameterError(
                f"--device {device}: {torch.cuda.device_count()} GPU(s) visible "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
        return device
    raise ParameterError(f"--device must be auto, cpu or cuda[:N]; got {device!r}")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("\nflags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):  # not Linux: ask torch for the ISA level
        import torch

        return "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()
    words = set(flags.split())
    return bool(words & {"avx512_bf16", "amx_bf16"})


def bf16_supported(device: str) -> bool:
    """bf16 is fast on `device`: a GPU that supports it, or a CPU with bf16 units."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_bf16()


def resolve_dtype(dtype: str, device: str) -> Any:
    """torch dtype for 'auto' (bf16 where the device supports it, else fp32), 'fp32', 'fp16', 'bf16'."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if dtype not in table:
        raise ParameterError(f"dtype must be auto, fp32, fp16 or bf16; got {dtype!r}")
    if dtype == "fp16" and device == "cpu":
        raise ParameterError("dtype fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return table[dtype]


def dtype_name(torch_dtype: Any) -> str:
    """The name settings use for a torch dtype: "fp32", "bf16" or "fp16"."""
    names = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
    return names[str(torch_dtype)]


def cached(key: LoadKey, loader: Callable[[], T]) -> T:
    """Load once per process for `key`; later calls with an equal key reuse the object."""
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = loader()
        return _CACHE[key]


def clear_model_cache() -> None:
    """Drop every loaded model and role object (tests; freeing GPU memory between jobs)."""
    with _LOCK:
        _CACHE.clear()
