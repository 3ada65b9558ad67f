"""Options shared by several commands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from instructmining.errors import ParameterError
from instructmining.schemas import parse_field_map


def _parse_map(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    try:
        out: dict[str, str] = {}
        for spec in value:
            out.update(parse_field_map(spec))
        return out
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--map: "), ctx, param) from None


def map_option(f: Any) -> Any:
    return click.option(
        "--map",
        "field_map",
        multiple=True,
        callback=_parse_map,
        metavar="TARGET=FIELD,...",
        help="Name the source fields: instruction, input, output, id, or messages/"
        "conversations/transcript for chats (e.g. --map instruction=question,output=answer; "
        "--map transcript=rejected reads HH-RLHF's rejected side).",
    )(f)


def on_error_option(f: Any) -> Any:
    return click.option(
        "--on-error",
        type=click.Choice(["raise", "skip"]),
        default="raise",
        show_default=True,
        help="On a malformed row: stop (exit 2), or skip it and write it to OUT.rejects.jsonl.",
    )(f)


def overwrite_option(f: Any) -> Any:
    return click.option("--overwrite", is_flag=True, help="Replace an existing output file.")(f)


def quiet_option(f: Any) -> Any:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar.")(f)


#: files that hold a checkpoint's weights (transformers, sentence-transformers, peft)
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")


def phase_logger() -> Callable[[str], None]:
    """One timestamped line on stderr per phase of a long job (where no bars are drawn)."""
    return lambda line: click.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True)


def phases_without_bars(quiet: bool) -> Callable[[str], None] | None:
    """The phase logger when no progress bars are drawn (not a terminal) and -q is not given."""
    from instructmining.progress import progress_enabled

    return None if quiet or progress_enabled(quiet) else phase_logger()


def engine_options(f: Any) -> Any:
    """--engine, --num-actors, --gpus-per-actor, --ray-address (score and select)."""
    for option in reversed(
        [
            click.option(
                "--engine",
                type=click.Choice(["local", "ray"]),
                default="local",
                show_default=True,
                help="Where record batches are scored: this process, or Ray actors "
                "(pip install 'instructmining[ray]'; the score cache stays here).",
            ),
            click.option(
                "--num-actors",
                type=click.IntRange(min=1),
                default=2,
                show_default=True,
                help="Ray engine: actors, each with its own loaded models.",
            ),
            click.option(
                "--gpus-per-actor",
                type=click.FloatRange(min=0),
                default=0,
                show_default=True,
                help="Ray engine: GPUs per actor (fractions share a GPU).",
            ),
            click.option(
                "--ray-address",
                default=None,
                help="Ray engine: an existing cluster (e.g. auto, ray://host:10001); "
                "default: start a local Ray.",
            ),
        ]
    ):
        f = option(f)
    return f


def make_executor(
    engine: str, num_actors: int, gpus_per_actor: float, ray_address: str | None
) -> Any:
    """None for the local engine, else a `RayExecutor` (close it when done)."""
    if engine != "ray":
        if ray_address is not None or gpus_per_actor:
            raise click.UsageError("--ray-address and --gpus-per-actor need --engine ray")
        return None
    from instructmining.indicators.ray_executor import RayExecutor, require_ray

    require_ray()  # before any work: a missing ray is one line, not a failure mid-run
    return RayExecutor(num_actors=num_actors, gpus_per_actor=gpus_per_actor, address=ray_address)


def _checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be a checkpoint (None when it may be): cheap file checks only."""
    if not folder.is_dir():
        return "is a file, not a checkpoint folder"
    files = [p for p in folder.iterdir() if p.is_file()]
    files += [p for d in folder.iterdir() if d.is_dir() for p in d.iterdir() if p.is_file()]
    if not files:
        return "is an empty folder"
    for f in (p for p in files if p.suffix == ".json" and p.stat().st_size < 64 << 20):
        try:
            json.loads(f.read_bytes())
        except (ValueError, RecursionError):
            return f"holds {f.relative_to(folder)}, which is not valid JSON"
    if not any(p.name == "config.json" for p in files):
        return "holds no config.json"
    weights = [p for p in files if p.suffix in _WEIGHTS]
    if not weights:
        return "holds no weights file (.safetensors or .bin)"
    for w in weights:
        if not _safetensors_whole(w):
            return f"holds {w.relative_to(folder)}, which is truncated or damaged"
    return None


def _safetensors_whole(path: Path) -> bool:
    """A .safetensors file whose header parses and whose size matches it (other files: not empty)."""
    size = path.stat().st_size
    if path.suffix != ".safetensors":
        return size > 0
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n > size - 8:
                return False
            header = json.loads(fh.read(n))
        end = max(
            (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    return bool(size == 8 + n + end)


def check_checkpoint(spec: str, option: str) -> None:
    """Refuse, before any work, a checkpoint path given on the command line that cannot load.

    A path that does not exist, a file, an empty folder, a folder without
    config.json or weights, a JSON file that does not parse or a truncated
    .safetensors file: ParameterError (exit 2) naming `option` and the path.
    Hub ids and catalogue names are left to the model loader; `gguf:FILE` must name
    a file; a plugin's scheme is left to the plugin.
    """
    from instructmining.models.backends import NON_NEURAL, split_scheme

    if spec in NON_NEURAL:
        return
    target = split_scheme(spec)
    if target != spec:  # a registered scheme prefix
        scheme = spec.partition(":")[0].lower()
        if scheme == "gguf":
            if not Path(target).expanduser().is_file():
                raise ParameterError(
                    f"{option}: GGUF file '{target}' does not exist; write gguf:PATH with the "
                    "path of a .gguf file"
                )
            return
        if scheme not in ("hf", "st"):
            return
        spec = target
    path = Path(spec).expanduser()
    if not path.exists():
        # hub ids are "name" or "org/name"; anything else is meant as a path
        if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
            raise ParameterError(
                f"{option}: checkpoint path '{spec}' does not exist; give the folder that holds "
                "the model (config.json and weights), a hub id or a name from "
                "`instructmining models`"
            )
        return
    problem = _checkpoint_problem(path)
    if problem is not None:
        raise ParameterError(
            f"{option}: {spec} {problem}, so it is not a usable checkpoint; give the folder "
            "that holds the model (config.json and weights, as save_pretrained writes them)"
        )


def _parse_models(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, str]:
    """--model callback: NAME=CHECKPOINT pairs, NAME a model key, every checkpoint checked."""
    from instructmining.indicators.profiles import expand_models, model_keys

    out: dict[str, str] = {}
    for item in value:
        key, sep, path = item.partition("=")
        key, path = key.strip(), path.strip()
        if not sep or not key or not path:
            raise click.BadParameter(
                f"{item!r} is not NAME=CHECKPOINT (e.g. --model reward=/models/rm), "
                f"NAME one of {', '.join(model_keys())}",
                ctx,
                param,
            )
        out[key] = path
    try:
        expand_models(out)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), ctx, param) from None
    for key, path in out.items():  # every checkpoint checked before any work
        check_checkpoint(path, f"--model {key}={path}")
    return out


def check_base_model(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--base-model callback: `tiny`, a name or hub id, or a checkpoint path checked at once."""
    if value != "tiny":
        check_checkpoint(value, "--base-model")
    return value


def model_options(f: Any) -> Any:
    """--model NAME=CHECKPOINT (repeatable), --device, --batch-size."""
    f = click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Records per model batch (default: each indicator's own).",
    )(f)
    f = click.option(
        "--device",
        default=None,
        metavar="auto|cpu|cuda[:N]",
        help="Where models run (default auto: a GPU when visible).",
    )(f)
    return model_option(f)


def model_option(f: Any) -> Any:
    """--model NAME=CHECKPOINT (repeatable)."""
    return click.option(
        "--model",
        "models",
        multiple=True,
        callback=_parse_models,
        metavar="NAME=CHECKPOINT",
        help="Checkpoint (hub id or local path) for an indicator; `unieval` sets naturalness, "
        "coherence and understandability together. Repeatable.",
    )(f)


def _parse_settings(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """--set callback: IND.KEY=VALUE pairs, typed and checked as stored settings are."""
    from instructmining.errors import ParameterError
    from instructmining.indicators.spec import parse_settings

    try:
        return parse_settings(values)
    except ParameterError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def settings_option(f: Any) -> Any:
    """--set IND.KEY=VALUE (repeatable): one indicator's own setting."""
    return click.option(
        "--set",
        "settings",
        multiple=True,
        callback=_parse_settings,
        metavar="IND.KEY=VALUE",
        help="One indicator's own setting, e.g. --set knn6.k=10 --set knn6.index=hnsw "
        "--set perplexity.template=plain (`instructmining indicators -v` lists them); "
        "repeatable.",
    )(f)


def bootstrap_option(default: int) -> Any:
    """--bootstrap N: rerun the rule's selection on N resamples of the rows (0: skip)."""
    return click.option(
        "--bootstrap",
        type=click.IntRange(min=0),
        default=default,
        show_default=True,
        help="Rerun the selection on N bootstrap resamples of the rows and report how often "
        "each indicator is chosen (its stability, on the rule card and in the report); "
        "0 skips it.",
    )


def _train_defaults(name: str) -> str:
    """`name`'s default for a real base and for `tiny`, for the help texts."""
    from instructmining.experiments.defaults import REAL_DEFAULTS, TINY_DEFAULTS

    real, tiny = REAL_DEFAULTS[name], TINY_DEFAULTS[name]
    return f"default {real}" + (f" ({tiny} for tiny)" if tiny != real else "")


def training_options(
    batch_flag: str = "--batch-size", device_flag: str = "--train-device", seed: bool = True
) -> Any:
    """The finetuning settings of the commands that train (study run, baseline, compare, select).

    One set of options, so that every command can name every part of a training
    configuration (the results store's key) and the help states the real defaults.
    `seed` False: the command chooses its seeds itself (compare's --seeds).
    """

    def decorate(f: Any) -> Any:
        options = [
            click.option(
                "--base-model",
                default="tiny",
                show_default=True,
                callback=check_base_model,
                help="A causal LM (catalogue name, local folder or hub id), or `tiny`: a small "
                "GPT-2 built on the study's sources (demonstrations and CI only).",
            ),
            click.option(
                "--lora",
                is_flag=True,
                default=None,
                help="Train LoRA adapters (peft) instead of every weight.",
            ),
            click.option("--lora-r", type=click.IntRange(min=1), default=None, help="LoRA rank."),
            click.option(
                "--epochs",
                type=click.IntRange(min=1),
                help="Epochs; " + _train_defaults("epochs") + ".",
            ),
            click.option(
                "--lr",
                type=click.FloatRange(min=0, min_open=True),
                help="Learning rate; " + _train_defaults("lr") + ".",
            ),
            click.option(
                batch_flag,
                "train_batch_size",
                type=click.IntRange(min=1),
                help="Training batch size; " + _train_defaults("batch_size") + ".",
            ),
            click.option(
                "--max-length",
                type=click.IntRange(min=8),
                help="Tokens per example; " + _train_defaults("max_length") + ".",
            ),
            click.option(
                "--template",
                type=click.Choice(["auto", "alpaca", "chat"]),
                default=None,
                help="Prompt layout; default auto: the model's chat template when it has one "
                "(alpaca for tiny).",
            ),
            click.option(
                "--precision",
                type=click.Choice(["auto", "fp32", "bf16-mixed"]),
                default=None,
                help="Default auto: bf16 autocast where the CPU/GPU computes bf16 natively, "
                "else fp32 (fp32 for tiny).",
            ),
            click.option(
                device_flag,
                "train_device",
                default=None,
                help="Where finetuning runs: auto, cpu or cuda[:N] (default auto).",
            ),
            click.option(
                "--threads",
                type=click.IntRange(min=1),
                default=None,
                help="torch CPU threads per run (default: 1 for tiny, else all cores).",
            ),
        ]
        if seed:
            options.append(
                click.option("--seed", type=int, default=None, help="Training seed (default 0).")
            )
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def run_settings(
    base_model: str,
    *,
    train_batch_size: int | None = None,
    train_device: str | None = None,
    **values: Any,
) -> Any:
    """RunSettings from `training_options` values (unset ones keep the defaults)."""
    from instructmining.experiments.runner import settings_for

    over = {**values, "batch_size": train_batch_size, "device": train_device}
    try:
        return settings_for(base_model, **{k: v for k, v in over.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
