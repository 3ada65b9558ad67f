"""Finetuning defaults as plain values: one source for the runner and the command line's help.

Kept free of heavy imports so that `instructmining --help` does not load numpy or
the study code to print them.
"""

from __future__ import annotations

from typing import Any

#: the tiny base, chosen so that 40 candidates x 1,000 examples fit in 30 minutes on
#: 2 CPU cores (see the README's study section)
TINY_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "lr": 1e-3,
    "batch_size": 16,
    "warmup_ratio": 0.05,
    "max_length": 256,
    "template": "alpaca",
    "precision": "fp32",
}
#: a real base such as SmolLM2-135M on a CPU: one epoch, the learning rate of the pilot
#: in docs/study.md, the model's own chat template when it has one, bf16 autocast where
#: bf16 is fast (both resolved by `runner.resolve_settings`)
REAL_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "lr": 5e-5,
    "batch_size": 8,
    "max_length": 512,
    "template": "auto",
    "precision": "auto",
}
