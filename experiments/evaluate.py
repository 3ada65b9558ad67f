"""Evaluation loss: mean negative log-likelihood of D_eval's reference responses.

Token-weighted: the summed NLL of every response token (EOS included) over all
of D_eval, divided by the number of those tokens; prompts are masked, and the
template is the one used in finetuning. The per-example average is reported
beside it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from instructmining.experiments.finetune import autocast_context, collate, length_batches
from instructmining.experiments.template import IGNORE, encode_all
from instructmining.models.causal import position_logits, split_head
from instructmining.records import Record


@dataclass
class EvalResult:
    """Evaluation loss and what it was computed over."""

    loss: float  # token-weighted mean NLL (nats per response token)
    example_mean: float  # mean over examples of each example's mean NLL
    tokens: int  # response tokens scored
    all_tokens: int  # tokens through the model, prompts included
    examples: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        """Evaluation throughput in tokens (prompt + response) per second."""
        return self.all_tokens / self.seconds if self.seconds > 0 else float("nan")


def eval_loss(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    max_length: int = 512,
    batch_size: int = 16,
    device: str = "cpu",
    template: str = "alpaca",
    precision: str = "fp32",
) -> EvalResult:
    """Mean NLL per response token of `records` under `model` (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    if not records:
        raise ValueError("the evaluation set is empty")
    start = time.perf_counter()
    examples = encode_all(tokenizer, records, max_length, template)
    lengths = [len(x) for x, _ in examples]
    sums = [0.0] * len(examples)
    counts = [0] * len(examples)
    model.eval()
    head = split_head(model)
    with torch.inference_mode():
        for batch in length_batches(lengths, batch_size, None):
            ids, mask, labels = collate(
                [examples[i] for i in batch], tokenizer.pad_token_id, device
            )
            target = labels[:, 1:]  # position t predicts token t + 1
            rows, cols = (target != IGNORE).nonzero(as_tuple=True)
            with autocast_context(precision, device):
                logits = position_logits(model, head, ids, mask, rows, cols)
            nll = F.cross_entropy(logits, target[rows, cols], reduction="none").double()
            per_sum = (
                torch.zeros(len(batch), dtype=torch.float64)
                .index_add_(0, rows.cpu(), nll.cpu())
                .tolist()
            )
            per_n = torch.bincount(rows.cpu(), minlength=len(batch)).tolist()
            for j, i in enumerate(batch):
                sums[i] = per_sum[j]
                counts[i] = int(per_n[j])
    n_tokens = sum(counts)
    return EvalResult(
        loss=sum(sums) / n_tokens,
        example_mean=sum(s / c for s, c in zip(sums, counts, strict=True) if c)
        / max(1, sum(1 for c in counts if c)),
        tokens=n_tokens,
        all_tokens=sum(lengths),
        examples=len(examples),
        seconds=time.perf_counter() - start,
    )
