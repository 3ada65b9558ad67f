"""A local Hugging Face causal language model as a generator backend (batched generation).

`--llm hf:SPEC` takes a catalogue name (`instructmining models`, e.g.
`smollm2-135m-instruct`), a local folder or a hub id. The spec is resolved by
`instructmining.models.loading.check_model_source`, so a packaged model loads
offline and a name that cannot be loaded here fails before any work, in one line
that says what to do. The loaded model is shared, through the per-process model
cache, with the indicators that read the same causal LM (perplexity in `loop`).

Prompt layout: when the tokenizer has a chat template, each prompt is sent as one
user turn followed by the assistant header (as `openai-chat:` does); otherwise the
prompt is the plain text. Prompts are left-padded by hand (the shared tokenizer is
never modified), generation runs under `torch.inference_mode()` and never past the
model's context. Stop sequences end a sequence as soon as it produces one and are
cut from the decoded text; presence/frequency penalties have no exact counterpart
in `generate` and are ignored (the run's statistics record it).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instructmining.errors import InstructMiningError
from instructmining.generation.backends.base import (
    BackendError,
    BackendSettingError,
    Completion,
    LLMBackend,
    SamplingParams,
    apply_stop,
)

TEMPLATES = ("auto", "chat", "plain")
_CAUSAL = "causal-lm"
# a context size above this is a tokenizer's "no limit" placeholder, not a real one
_NO_LIMIT = 1 << 30


class HFBackend(LLMBackend):
    """Generate with `AutoModelForCausalLM`: a catalogue name, a local folder or a hub id."""

    name = "hf"

    def __init__(
        self,
        *,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        seed: int = 0,
        template: str = "auto",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(TEMPLATES)}; got {template!r}")
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.seed = seed
        self.template = template
        self.checkpoint: str | None = None  # what `model` resolved to, once loaded
        self.layout: str | None = None  # "chat" or "plain", once loaded
        self._loaded: tuple[Any, Any, str] | None = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": "hf", "model": self.model, "penalties": "ignored"}
        if self.checkpoint is not None:
            info.update(checkpoint=self.checkpoint, template=self.layout)
        return info

    # --- loading -------------------------------------------------------------------------

    def resolve(self) -> str:
        """The folder or hub id `model` names; BackendError (one line, with the fix) otherwise."""
        from instructmining.models import catalogue
        from instructmining.models.loading import ModelUnavailableError, check_model_source

        spec = self.model
        named = catalogue.entry(spec)
        if named is not None and named.role != _CAUSAL and not Path(spec).expanduser().exists():
            raise BackendSettingError(
                f"--llm hf:{spec}: the catalogue model {named.name!r} has role {named.role!r}, "
                f"not {_CAUSAL!r}; the catalogue's causal LMs: {', '.join(_causal_names())}"
            )
        try:
            return check_model_source(spec, indicator=f"--llm hf:{spec}", option="--llm")
        except ModelUnavailableError as exc:  # the command names what is not here: fix it
            raise BackendSettingError(self._unavailable(str(exc), named is not None)) from None

    def check(self) -> None:
        """The model exists here (catalogue name, folder or cached hub id); see `resolve`."""
        self.resolve()

    def _closest_name(self) -> str | None:
        """The catalogue causal LM `model` looks like a misspelling of, if any."""
        from instructmining.models.catalogue import entry

        if entry(self.model) is not None:
            return None
        close = difflib.get_close_matches(self.model.lower(), _causal_names(), n=1, cutoff=0.75)
        return close[0] if close else None

    def _unavailable(self, reason: str, is_name: bool) -> str:
        spec = self.model
        closest = self._closest_name()
        if closest is not None:
            return (
                f"--llm hf:{spec}: no catalogue model, local folder or loadable hub id "
                f"has this name; did you mean --llm hf:{closest}?"
            )
        # the loading layer names the flag without our "hf:" prefix
        reason = reason.replace("--llm /path/to/checkpoint", "--llm hf:/path/to/checkpoint")
        if is_name:
            return reason
        return f"{reason} (named models: `instructmining models`)"

    def _load(self) -> tuple[Any, Any, str]:
        if self._loaded is not None:
            return self._loaded
        source = self.resolve()  # before importing torch: a wrong name fails at once
        try:
            import torch
            import transformers  # noqa: F401 - fail here with the install line
        except ImportError as exc:
            raise ImportError(
                "the hf backend needs torch and transformers: pip install 'instructmining[models]'"
            ) from exc
        from instructmining.models.backends import ModelRef, load_source
        from instructmining.models.loading import dtype_name, resolve_device, resolve_dtype
        from instructmining.models.roles import CAUSAL_LM

        try:
            device = resolve_device(self.device)
            torch_dtype = resolve_dtype(self.dtype, device)
        except InstructMiningError as exc:
            # the loading layer speaks of --device/dtype; here they are --llm-device/--llm-dtype
            text = str(exc).replace("--device", "--llm-device")
            raise BackendError(f"--llm-{text}" if text.startswith("dtype") else text) from None

        try:
            # the causal-LM indicators' loader and cache key, so `loop` loads the model once
            lm = load_source(
                CAUSAL_LM,
                ModelRef("hf", source, explicit=True),
                source,
                device=device,
                dtype=dtype_name(torch_dtype),
                indicator=f"--llm hf:{self.model}",
                option="--llm",
            )
            tokenizer, model = lm.tokenizer, lm.model
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            closest = self._closest_name()  # a hub lookup of a misspelt name lands here
            hint = f"; did you mean --llm hf:{closest}?" if closest else ""
            raise BackendError(
                f"--llm hf:{self.model}: cannot load {source} as a causal LM: {first}{hint}"
            ) from exc
        self.checkpoint = source
        self.layout = self._layout(tokenizer)
        torch.manual_seed(self.seed)
        self._loaded = (tokenizer, model, device)
        return self._loaded

    def _layout(self, tokenizer: Any) -> str:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.template == "chat" and not has_template:
            raise BackendSettingError(
                f"--llm hf:{self.model}: the tokenizer has no chat template; use --llm-template "
                "plain or auto"
            )
        if self.template != "auto":
            return self.template
        return "chat" if has_template else "plain"

    # --- generation ----------------------------------------------------------------------

    def encode(self, tokenizer: Any, prompt: str) -> list[int]:
        """Token ids of one prompt in the backend's layout (chat: one user turn, then the reply header)."""
        if self.layout == "chat":
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            # the template writes its own special tokens
            return list(tokenizer(text, add_special_tokens=False).input_ids)
        return list(tokenizer(prompt).input_ids)

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        tokenizer, model, device = self._load()
        encoded = [self.encode(tokenizer, p) for p in prompts]
        context = context_length(model, tokenizer)
        longest = max((len(ids) for ids in encoded), default=0)
        if longest >= context:
            raise BackendSettingError(
                f"--llm hf:{self.model}: a prompt of {longest} tokens fills the model's "
                f"context of {context} tokens; use a model with a longer context"
            )
        # similar lengths share a batch (less padding); answers go back in prompt order
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        out: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            done = self._generate(
                tokenizer, model, device, [encoded[i] for i in batch], params, context
            )
            for i, completion in zip(batch, done, strict=True):
                out[i] = completion
        return [c for c in out if c is not None]

    def _generate(
        self,
        tokenizer: Any,
        model: Any,
        device: str,
        rows: list[list[int]],
        params: SamplingParams,
        context: int,
    ) -> list[Completion]:
        import torch

        pad = _pad_id(tokenizer)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):  # left padding: generation continues from the right edge
            ids[j, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[j, width - len(row) :] = 1
        # a long prompt leaves less room; the cut shows as finish_reason "length"
        budget = min(params.max_tokens, context - width)
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": budget,
            "do_sample": sample,
            "pad_token_id": pad,
        }
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        stops = [s for s in params.stop if s]
        if stops:  # end each sequence at its first stop sequence instead of running on
            kwargs["stopping_criteria"] = _stop_criteria(tokenizer, stops, width)
        with torch.inference_mode():
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs
            )
        ends = _end_ids(tokenizer, model)
        result = []
        for j, row in enumerate(generated[:, width:].tolist()):
            cut = next((k for k, t in enumerate(row) if t in ends), None)
            ended = cut is not None
            new = row[:cut] if ended else _strip_trailing(row, pad)
            text = tokenizer.decode(new, skip_special_tokens=True)
            text, stopped = apply_stop(text, params.stop)
            n_prompt = len(rows[j])
            self.usage.add(requests=1, prompt=n_prompt, completion=len(new))
            # a sequence that ended before its budget stopped at a stop sequence or end token
            finish = "stop" if (stopped or ended or len(new) < budget) else "length"
            result.append(Completion(text, finish, n_prompt, len(new)))
        return result

    def close(self) -> None:
        self._loaded = None


def _causal_names() -> list[str]:
    from instructmining.models.catalogue import CATALOGUE

    return sorted(name for name, e in CATALOGUE.items() if e.role == _CAUSAL)


def _stop_criteria(tokenizer: Any, stops: list[str], start: int) -> Any:
    """Ends a sequence once its generated text (never the prompt) holds a stop sequence.

    (transformers' `stop_strings` also matches text that begins in the prompt: a chat
    prompt ending in a newline and a first generated newline would match "\n\n".)
    Only the last few tokens are decoded at each step: a stop sequence of L characters
    spans at most L tokens.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    window = max(len(s) for s in stops) + 8

    class StopSequences(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            tails = input_ids[:, start:][:, -window:].tolist()
            texts = tokenizer.batch_decode(tails, skip_special_tokens=True)
            hits = [any(s in text for s in stops) for text in texts]
            return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopSequences()])


def _pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def _end_ids(tokenizer: Any, model: Any) -> set[int]:
    """Token ids that end a reply: the tokenizer's EOS and the generation config's."""
    ends: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        if isinstance(value, int):
            ends.add(value)
        elif isinstance(value, (list, tuple)):
            ends.update(v for v in value if isinstance(v, int))
    return ends


def _strip_trailing(row: list[int], pad: int) -> list[int]:
    # a sequence stopped early (stop sequence) is filled up with padding to the batch's width
    end = len(row)
    while end > 0 and row[end - 1] == pad:
        end -= 1
    return row[:end]


def context_length(model: Any, tokenizer: Any | None = None) -> int:
    """Positions the model can attend to: its config's limit, else its tokenizer's."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT:
        return limit
    return _NO_LIMIT
