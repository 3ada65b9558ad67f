"""A local Hugging Face causal language model as a generator backend (batched generation).

Stop sequences are applied to the decoded text; presence/frequency penalties have no
exact counterpart in `generate` and are ignored (the run's statistics record it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from instructmining.generation.backends.base import (
    BackendError,
    Completion,
    LLMBackend,
    SamplingParams,
    apply_stop,
)


class HFBackend(LLMBackend):
    """Generate with `AutoModelForCausalLM` loaded from a local path or the hub cache."""

    name = "hf"

    def __init__(
        self,
        *,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.seed = seed
        self._loaded: tuple[Any, Any, str] | None = None

    def describe(self) -> dict[str, Any]:
        return {"backend": "hf", "model": self.model, "penalties": "ignored"}

    def _load(self) -> tuple[Any, Any, str]:
        if self._loaded is not None:
            return self._loaded
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ImportError(
                "the hf backend needs torch and transformers: pip install 'instructmining[models]'"
            ) from exc
        from instructmining.indicators.models import resolve_device, resolve_dtype

        spec = self.model
        path = Path(spec).expanduser()
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        if not path.exists() and (spec.startswith((".", "/", "~")) or offline):
            raise BackendError(
                f"--llm hf:{spec}: no such local checkpoint"
                + (" (HF_HUB_OFFLINE is set, so hub ids cannot be fetched)" if offline else "")
            )
        source = str(path) if path.exists() else spec
        device = resolve_device(self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=resolve_dtype(self.dtype, device)
            )
        except OSError as exc:
            raise BackendError(f"--llm hf:{spec}: cannot load it: {exc}") from exc
        model = cast(Any, model).to(device).eval()
        tokenizer.padding_side = "left"  # generation continues from the right edge
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        torch.manual_seed(self.seed)
        self._loaded = (tokenizer, model, device)
        return self._loaded

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        import torch

        tokenizer, model, device = self._load()
        out: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start : start + self.batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
            width = int(enc["input_ids"].shape[1])
            room = _context_length(model) - width
            if room < 1:
                raise BackendError(
                    f"--llm hf:{self.model}: a prompt of {width} tokens fills the model's "
                    f"context of {_context_length(model)} tokens; use a model with a longer context"
                )
            sample = params.temperature > 0
            kwargs: dict[str, Any] = {
                # a long prompt leaves less room; the cut shows as finish_reason "length"
                "max_new_tokens": min(params.max_tokens, room),
                "do_sample": sample,
                "pad_token_id": tokenizer.pad_token_id,
            }
            if sample:
                kwargs.update(temperature=params.temperature, top_p=params.top_p)
            with torch.inference_mode():
                generated = model.generate(**enc, **kwargs)
            new = generated[:, enc["input_ids"].shape[1] :]
            for i, row in enumerate(new):
                ids = row.tolist()
                eos = tokenizer.eos_token_id
                ended = eos is not None and eos in ids
                if ended:
                    ids = ids[: ids.index(eos)]
                text = tokenizer.decode(ids, skip_special_tokens=True)
                text, stopped = apply_stop(text, params.stop)
                n_prompt = int(enc["attention_mask"][i].sum())
                self.usage.add(requests=1, prompt=n_prompt, completion=len(ids))
                finish = "stop" if (stopped or ended) else "length"
                out.append(Completion(text, finish, n_prompt, len(ids)))
        return out

    def close(self) -> None:
        self._loaded = None


def _context_length(model: Any) -> int:
    """Positions the model can attend to (a very large number when it does not say)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30
