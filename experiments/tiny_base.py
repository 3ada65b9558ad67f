"""The `tiny` base model: a small GPT-2 and a BPE tokenizer trained on the study's own sources.

For demonstrations and CI where no pretrained weights can be downloaded: the
tokenizer is trained once on the pooled source records and saved
(`tokenizer.json`; BPE training is not reproducible across processes, so it is
never retrained), then the model is pretrained briefly on the same records
(prompt and response, every token) so that each finetuning starts from a
language model rather than from noise. It is NOT a research result: pass a real
checkpoint with --base-model for the real study.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from instructmining.errors import InstructMiningError
from instructmining.records import Record

EOS = "<|endoftext|>"
PAD = "<pad>"
DONE = "tiny_base.json"


@dataclass(frozen=True)
class TinyBaseConfig:
    """Size of the tiny model and of its brief pretraining."""

    vocab_size: int = 4096
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    max_length: int = 256
    pretrain_examples: int = 3000  # records drawn from the pool for pretraining
    pretrain_epochs: int = 1
    pretrain_lr: float = 2e-3
    batch_size: int = 16
    seed: int = 0


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (transformers fast tokenizer) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def _save_tokenizer(tok: Any, folder: Path) -> None:
    tok.save_pretrained(folder)
    cfg = folder / "tokenizer_config.json"
    doc = json.loads(cfg.read_text())
    # transformers 5 writes "TokenizersBackend", which 4.x cannot read
    doc["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.write_text(json.dumps(doc, indent=2))


def build_tiny_base(
    records: Sequence[Record],
    folder: str | Path,
    config: TinyBaseConfig | None = None,
    *,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Build (or reuse) the tiny base in `folder`; returns its description.

    Reused when `folder` holds a finished base built with the same config. Built
    in a fresh temporary sibling folder whose completion marker (`DONE`) is
    written last, then renamed into place: a folder without the marker (a crash,
    a copy cut short) is never taken for a base and is rebuilt. The caller holds
    the study's lock (`experiments.lock`), so leftovers of killed builds beside
    `folder` are removed.
    """
    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel

    from instructmining.experiments.finetune import TrainConfig, train_examples
    from instructmining.experiments.template import format_prompt

    cfg = config or TinyBaseConfig()
    out = Path(folder)
    info: dict[str, Any] | None = finished(out)
    if info is not None:
        if info.get("config") == asdict(cfg):
            return info
        raise InstructMiningError(
            f"{out}: holds a tiny base built with other settings; remove the folder to rebuild it"
        )
    if not records:
        raise ValueError("the tiny base needs source records to train on")
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in [*out.parent.glob(f".{out.name}.partial-*"), out.with_name(out.name + ".partial")]:
        shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the base from workers running as others

    texts = [format_prompt(r) + r.output for r in records]
    tok = train_tokenizer(texts, cfg.vocab_size)
    _save_tokenizer(tok, tmp)

    import torch

    torch.manual_seed(cfg.seed)
    model: Any = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=cfg.max_length,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    model = model.to(device)
    rng = np.random.default_rng(cfg.seed)
    take = min(cfg.pretrain_examples, len(records))
    chosen = sorted(rng.choice(len(records), size=take, replace=False).tolist())
    enc = tok([texts[i] for i in chosen], add_special_tokens=False)["input_ids"]
    seqs = [[*ids[: cfg.max_length - 1], tok.eos_token_id] for ids in enc if ids]
    stats = train_examples(
        model,
        [(s, list(s)) for s in seqs],
        TrainConfig(
            epochs=cfg.pretrain_epochs,
            lr=cfg.pretrain_lr,
            batch_size=cfg.batch_size,
            warmup_ratio=0.05,
            max_length=cfg.max_length,
            seed=cfg.seed,
        ),
        pad_id=tok.pad_token_id,
        device=device,
        progress=progress,
        desc="pretraining tiny base",
    )
    model.save_pretrained(tmp)
    info = {
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tok),
        "pretrain_examples": len(seqs),
        "pretrain_tokens": stats.tokens,
        "pretrain_first_loss": stats.first_loss,
        "pretrain_last_loss": stats.last_loss,
        "pretrain_tokens_per_s": stats.tokens_per_s,
        "seconds": time.perf_counter() - start,
        "note": "demonstration/CI base, not a research result",
    }
    (tmp / DONE).write_text(json.dumps(info, indent=2))  # last: the base is complete
    if out.exists():  # an unfinished base (no marker)
        shutil.rmtree(out)
    tmp.rename(out)
    return info


def finished(folder: str | Path) -> dict[str, Any] | None:
    """The description of the finished base in `folder`; None without a readable marker."""
    try:
        info = json.loads((Path(folder) / DONE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def base_folder(root: str | Path, config: TinyBaseConfig) -> Path:
    """Where the base for `config` lives under `root`: `tiny`, or `tiny-HASH` when `tiny`
    holds a finished base built with other settings (e.g. a seed rerun)."""
    import hashlib

    first = Path(root) / "tiny"
    built = finished(first)
    if built is None or built.get("config") == asdict(config):
        return first
    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()
    return first.with_name(f"tiny-{digest[:8]}")
