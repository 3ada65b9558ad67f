"""Finetune a causal LM on records: our own small, deterministic training loop.

AdamW, linear warmup then linear decay to zero, gradient clipping, batches of
similar length (sorted, then the batch order shuffled each epoch) padded on the
right, loss on response tokens only (see `template`). Full finetuning, or LoRA
through peft.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.experiments.template import IGNORE, TEMPLATE_NAME, TEMPLATES, encode_all
from instructmining.models.causal import position_logits, split_head
from instructmining.records import Record

PRECISIONS = ("fp32", "bf16-mixed")


@dataclass(frozen=True)
class TrainConfig:
    """Finetuning settings; `key()` hashes them into the results table."""

    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 16
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    seed: int = 0
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    #: prompt layout: "alpaca" or "chat" (the tokenizer's chat template); see `template`
    template: str = "alpaca"
    #: "fp32", or "bf16-mixed" (fp32 master weights, bf16 autocast; where bf16 is fast)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.template not in (*TEMPLATES, "auto"):
            raise ValueError(
                f"TrainConfig.template must be one of {', '.join(TEMPLATES)}, got {self.template!r}"
            )
        if self.precision not in (*PRECISIONS, "auto"):
            raise ValueError(
                f"TrainConfig.precision must be one of {', '.join(PRECISIONS)}, "
                f"got {self.precision!r}"
            )
        for name in ("epochs", "batch_size", "max_length", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def key(self) -> str:
        """Stable hash of the settings and the prompt template ("auto" must be resolved first)."""
        if "auto" in (self.template, self.precision):
            raise ValueError("resolve the 'auto' template and precision before hashing a config")
        layout = TEMPLATE_NAME if self.template == "alpaca" else self.template
        blob = json.dumps({**asdict(self), "template": layout}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class TrainStats:
    """What a training run did."""

    steps: int
    tokens: int  # non-padding tokens through the model, all epochs
    target_tokens: int  # tokens the loss was computed on
    seconds: float
    first_loss: float
    last_loss: float
    #: records whose response did not fit in max_length and was cut (trained on its start)
    responses_cut: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Training throughput in non-padding tokens per second."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads (default: every core) for torch's intra-op work."""
    import torch

    n = threads or os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator | None
) -> list[list[int]]:
    """Indices grouped into batches of similar length; batch order shuffled by `rng`."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if rng is not None:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def collate(
    examples: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str
) -> tuple[Any, Any, Any]:
    """Right-padded (input_ids, attention_mask, labels) tensors; padding is IGNORE in labels."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
        labels[row, : len(y)] = torch.tensor(y)
    return ids.to(device), mask.to(device), labels.to(device)


def train_examples(
    model: Any,
    examples: Sequence[tuple[list[int], list[int]]],
    config: TrainConfig,
    *,
    pad_id: int,
    device: str = "cpu",
    progress: bool = False,
    desc: str = "training",
) -> TrainStats:
    """Run the training loop over encoded (input_ids, labels) examples."""
    import torch

    from instructmining.progress import progress_bar

    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    lengths = [len(ids) for ids, _ in examples]
    per_epoch = -(-len(examples) // config.batch_size)
    total = per_epoch * config.epochs
    warmup = max(1, round(config.warmup_ratio * total)) if config.warmup_ratio else 0

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optim = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, factor)
    autocast = autocast_context(config.precision, device)
    head = split_head(model)
    model.train()
    tokens = target = steps = 0
    first = last = float("nan")
    start = time.perf_counter()
    with progress_bar(total, desc, enabled=progress, unit="step") as bar:
        for _ in range(config.epochs):
            for batch in length_batches(lengths, config.batch_size, rng):
                ids, mask, labels = collate([examples[i] for i in batch], pad_id, device)
                shifted = labels[:, 1:]  # position t predicts token t + 1
                rows, cols = (shifted != IGNORE).nonzero(as_tuple=True)
                with autocast:  # the mean over response tokens, as the model's own loss
                    logits = position_logits(model, head, ids, mask, rows, cols)
                loss = torch.nn.functional.cross_entropy(logits, shifted[rows, cols])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at step {steps}")
                optim.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optim.step()
                sched.step()
                last = float(loss.item())
                if steps == 0:
                    first = last
                steps += 1
                tokens += int(mask.sum())
                target += len(rows)
                bar.update(1)
                bar.set_postfix_str(f"loss {last:.3f}")
    model.eval()
    return TrainStats(steps, tokens, target, time.perf_counter() - start, first, last)


def autocast_context(precision: str, device: str) -> Any:
    """bf16 autocast for "bf16-mixed" (weights stay fp32), else a no-op context."""
    import contextlib

    import torch

    if precision != "bf16-mixed":
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def default_precision(device: str) -> str:
    """ "bf16-mixed" where bf16 is fast on `device` (AMX/AVX-512 BF16 CPUs, recent GPUs), else "fp32"."""
    from instructmining.models.loading import bf16_supported

    return "bf16-mixed" if bf16_supported(device) else "fp32"


def load_causal_lm(spec: str, device: str) -> Any:
    """A causal LM from a local folder or hub id (checked first, so a typo fails fast)."""
    import torch
    from transformers import AutoModelForCausalLM

    from instructmining.models.hf import dtype_kwarg, quiet_transformers
    from instructmining.models.loading import check_model_source

    source = check_model_source(spec, indicator="study base model", option="--base-model")
    with quiet_transformers():
        model: Any = AutoModelForCausalLM.from_pretrained(source, **{dtype_kwarg(): torch.float32})
    return model.to(device)


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a base model, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    from instructmining.models.loading import check_model_source

    spec = check_model_source(spec, indicator="study base model", option="--base-model")
    tok = AutoTokenizer.from_pretrained(spec)
    if tok.eos_token_id is None:
        raise ValueError(f"{spec}: the tokenizer has no EOS token; the template needs one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def add_lora(model: Any, config: TrainConfig) -> Any:
    """Wrap `model` with LoRA adapters (peft); only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - peft is in the models extra
        raise ImportError("LoRA needs peft: pip install 'instructmining[models]'") from exc

    def make(targets: Any) -> Any:
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
        )

    try:
        return get_peft_model(model, make(None))
    except ValueError:  # an architecture peft has no default targets for
        return get_peft_model(model, make("all-linear"))


def finetune(
    base: str,
    records: Sequence[Record],
    config: TrainConfig,
    *,
    tokenizer: Any | None = None,
    device: str = "cpu",
    save_to: str | Path | None = None,
    progress: bool = False,
) -> tuple[Any, Any, TrainStats]:
    """Finetune the causal LM at `base` on `records`; (model, tokenizer, stats).

    The base is loaded fresh from disk (or the hub cache) each call, so every
    candidate starts from the same weights. `save_to` keeps the result (the LoRA
    adapter only, with LoRA).
    """
    tok = tokenizer if tokenizer is not None else load_tokenizer(base)
    model = load_causal_lm(base, device)
    if config.lora:
        model = add_lora(model, config)
    examples = encode_all(tok, records, config.max_length, config.template)
    stats = train_examples(
        model, examples, config, pad_id=tok.pad_token_id, device=device, progress=progress
    )
    # a whole response ends with EOS (encode_all); one cut at max_length does not
    cut = sum(1 for _, labels in examples if labels and labels[-1] != tok.eos_token_id)
    stats = replace(stats, responses_cut=cut)
    if save_to is not None:
        Path(save_to).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(save_to)
        tok.save_pretrained(save_to)
    return model, tok, stats
