"""Reward-model score of the response to the prompt.

A reward model (RM) is a sequence classifier with one output trained on human
preference pairs: a higher value means the RM prefers the response. The paper's
checkpoint is `OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5`; any
one-output `AutoModelForSequenceClassification` checkpoint works by id or path.

Input format (`template`) — each RM must read what it was trained on:

- "oasst": `<|prompter|>{prompt}<|endoftext|><|assistant|>{response}<|endoftext|>`
  (the OpenAssistant conversation format; the end token is the tokenizer's EOS).
- "chat": the tokenizer's own chat template with one user turn (the prompt) and
  one assistant turn (the response).
- "pair": the tokenizer's sentence-pair encoding of (prompt, response), as the
  OpenAssistant DeBERTa reward models are used.
- "auto" (default): "oasst" when the tokenizer has `<|prompter|>` and
  `<|assistant|>` tokens, the config is an OpenAssistant reward model, or the
  checkpoint name contains "oasst"; else "chat" when the tokenizer has a chat
  template; else "pair".

The prompt is `Record.prompt` (instruction, blank line, input). Past
`max_length` tokens (capped at the model's position limit) the prompt and the
response share what the template leaves: the prompt is cut from the left
(keeping its end, next to the response) down to half of that room, and only
then is the response cut from the right; so a long prompt never crowds out the
response and a long response is still judged against the end of its prompt.
Cuts fall on token boundaries of the prompt or response tokenised alone; the
template's tokens are always kept. `truncated_` counts the records cut,
`truncated_mask_` marks them.

The OpenAssistant Pythia RMs declare `"model_type": "gpt_neox_reward_model"`,
which transformers does not ship (OpenAssistant's training code defines it).
It is a GPT-NeoX trunk plus a linear head on the last attended token (or the
mean over tokens with `"pooling": "mean"`); this module implements that layout
so the checkpoint loads without running code from the hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from instructmining.errors import InstructMiningError
from instructmining.indicators.base import Indicator
from instructmining.indicators.registry import register
from instructmining.records import Record

DEFAULT_MODEL = "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"
TEMPLATES = ("auto", "oasst", "chat", "pair")
OASST_MODEL_TYPE = "gpt_neox_reward_model"
PROMPTER, ASSISTANT = "<|prompter|>", "<|assistant|>"


def _build_oasst_model_class() -> Any:
    """The OpenAssistant reward-model layout (GPT-NeoX trunk + one-output head), built lazily."""
    import torch
    from transformers.models.gpt_neox.modeling_gpt_neox import (
        GPTNeoXModel,
        GPTNeoXPreTrainedModel,
    )

    class OpenAssistantRewardModel(GPTNeoXPreTrainedModel):
        """GPT-NeoX hidden states pooled at the last attended token (or averaged), then Linear(h, 1)."""

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.gpt_neox = GPTNeoXModel(config)
            self.out_proj = torch.nn.Linear(config.hidden_size, 1)
            self.pooling = getattr(config, "pooling", None) or "last"
            if self.pooling not in ("last", "mean"):
                raise InstructMiningError(
                    f"reward: unknown pooling {self.pooling!r} in the checkpoint's config "
                    "(expected 'last' or 'mean')"
                )
            self.post_init()

        def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
            hidden = self.gpt_neox(input_ids=input_ids, attention_mask=attention_mask)[0]
            if attention_mask is None:
                attention_mask = torch.ones(input_ids.shape, device=hidden.device)
            mask = attention_mask.to(hidden.device)
            if self.pooling == "mean":
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
            else:
                # first position where the running count of attended tokens peaks:
                # the last real token under left or right padding alike
                last = mask.long().cumsum(1).argmax(1)
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            return self.out_proj(pooled)

    return OpenAssistantRewardModel


_OASST_CLASS: list[Any] = []


def oasst_model_class() -> Any:
    """The OpenAssistant reward-model class, built once per process (torch imported lazily)."""
    if not _OASST_CLASS:
        _OASST_CLASS.append(_build_oasst_model_class())
    return _OASST_CLASS[0]


def _offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    return list(
        tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    )


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def keep_last_tokens(tokenizer: Any, text: str, k: int) -> str:
    """The end of `text` that holds its last `k` tokens (cut at a token's start)."""
    if not getattr(tokenizer, "is_fast", True):  # no offsets: decode the kept ids
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return text if k >= len(ids) else "" if k <= 0 else tokenizer.decode(ids[-k:])
    offsets = _offsets(tokenizer, text)
    if k >= len(offsets):
        return text
    return "" if k <= 0 else text[offsets[len(offsets) - k][0] :]


def keep_first_tokens(tokenizer: Any, text: str, k: int) -> str:
    """The start of `text` that holds its first `k` tokens."""
    if not getattr(tokenizer, "is_fast", True):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return text if k >= len(ids) else "" if k <= 0 else tokenizer.decode(ids[:k])
    offsets = _offsets(tokenizer, text)
    if k >= len(offsets):
        return text
    return "" if k <= 0 else text[: offsets[k][0]]


def split_budget(prompt: int, response: int, budget: int) -> tuple[int, int]:
    """Tokens kept of (prompt, response) when they must share `budget` tokens.

    The response is kept whole when the prompt can give way; the prompt gives way
    down to half the budget (or its own length), so that a long response is
    still judged against the end of its prompt.
    """
    if prompt + response <= budget:
        return prompt, response
    prompt_floor = min(prompt, budget // 2)
    keep_response = min(response, budget - prompt_floor)
    return min(prompt, budget - keep_response), keep_response


_MAX_RECUTS = 12  # re-encoding rounds before the middle cut (each cuts twice as much)


@register
class Reward(Indicator):
    """Reward-model score of the output given the prompt. Higher = response preferred by the RM.

    Reads instruction, input, output. Source: the paper's reward score
    (OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5). Input format and
    truncation: module docstring. Cost: one forward pass of a 1.4B model per
    record (a GPU is advised).
    """

    name = "reward"
    description = "reward-model score of the response to the prompt"
    reads = ("instruction", "input", "output")
    direction = "higher = response preferred by the reward model"
    needs_model = True
    backends = ("transformers",)
    runtime_settings = ("device", "batch_size")

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        batch_size: int = 8,
        max_length: int = 1024,
        dtype: str = "auto",
        template: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.template = template
        self.trust_remote_code = trust_remote_code

    @property
    def backend(self) -> str:
        return "transformers"

    # --- loading -------------------------------------------------------------------------

    def _check_settings(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(
                f"The 'template' parameter of reward must be one of {', '.join(TEMPLATES)}. "
                f"Got {self.template!r} instead."
            )
        for key, low in (("batch_size", 1), ("max_length", 8)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"The '{key}' parameter of reward must be an int >= {low}. Got {value!r} instead."
                )

    def _load(self) -> tuple[Any, Any, str | None]:
        """(tokenizer, model on its device, the config's model_type), loaded once per process."""
        from instructmining.models.loading import (
            cached_model,
            load_target,
        )

        spec, device, torch_dtype = load_target(
            str(self.model), indicator=self.name, device=self.device, dtype=self.dtype
        )
        remote = bool(self.trust_remote_code)

        def load() -> tuple[Any, Any, str | None]:
            try:
                from transformers import (
                    AutoModelForSequenceClassification,
                    AutoTokenizer,
                    GPTNeoXConfig,
                    PretrainedConfig,
                )
            except ImportError as exc:  # pragma: no cover - part of the models extra
                raise ImportError(
                    "the reward indicator needs transformers: pip install 'instructmining[models]'"
                ) from exc
            from instructmining.models.hf import dtype_kwarg

            tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=remote)
            raw, _ = PretrainedConfig.get_config_dict(spec)
            kwargs = {dtype_kwarg(): torch_dtype, "trust_remote_code": remote}
            if raw.get("model_type") == OASST_MODEL_TYPE and not remote:
                fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures")}
                config = GPTNeoXConfig.from_dict(fields)
                config.pooling = raw.get("pooling") or "last"
                kwargs.pop("trust_remote_code")
                rm = oasst_model_class().from_pretrained(spec, config=config, **kwargs)
            else:
                rm = AutoModelForSequenceClassification.from_pretrained(spec, **kwargs)
                labels = getattr(rm.config, "num_labels", 1)
                if labels != 1:
                    raise InstructMiningError(
                        f"reward: {spec!r} has {labels} outputs; a reward model has one "
                        "(num_labels=1). Pass a reward model with --model reward=ID_OR_PATH"
                    )
            return tokenizer, rm.to(device).eval(), raw.get("model_type")

        from instructmining.models.hf import quiet_transformers

        with quiet_transformers():
            kind = "reward+remote-code" if remote else "reward"  # other classes may load
            return cached_model(kind, spec, device, str(torch_dtype), load)

    def resolve_template(self, tokenizer: Any, model_type: str | None) -> str:
        """The input format used for this checkpoint (`template`, with "auto" decided)."""
        if self.template != "auto":
            return self.template
        vocab = tokenizer.get_vocab()
        if PROMPTER in vocab and ASSISTANT in vocab:
            return "oasst"
        if model_type == OASST_MODEL_TYPE:
            return "oasst"
        if "oasst" in str(self.model).lower():
            return "oasst"
        if getattr(tokenizer, "chat_template", None):
            return "chat"
        return "pair"

    # --- encoding ------------------------------------------------------------------------

    def _encode(
        self, tokenizer: Any, template: str, prompt: str, response: str
    ) -> dict[str, list[int]]:
        if template == "oasst":
            end = tokenizer.eos_token or "<|endoftext|>"
            text = f"{PROMPTER}{prompt}{end}{ASSISTANT}{response}{end}"
            return {"input_ids": list(tokenizer(text).input_ids)}
        if template == "chat":
            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": response},
            ]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            # the rendered template already holds BOS and friends
            return {"input_ids": list(tokenizer(text, add_special_tokens=False).input_ids)}
        # sentence pairs: BERT-like encoders also need the segment ids
        enc = tokenizer(prompt, response)
        features = {"input_ids": list(enc.input_ids)}
        if "token_type_ids" in enc:
            features["token_type_ids"] = list(enc["token_type_ids"])
        return features

    def encode(
        self, tokenizer: Any, template: str, record: Record, limit: int
    ) -> tuple[dict[str, list[int]], bool]:
        """Model inputs of one record in `template`, cut to `limit` tokens (features, truncated?).

        `features["input_ids"]` are the token ids; "pair" adds `token_type_ids` when
        the tokenizer makes them.
        """
        prompt, response = record.prompt, record.output
        features = self._encode(tokenizer, template, prompt, response)
        if len(features["input_ids"]) <= limit:
            return features, False
        ids = features["input_ids"]
        n_prompt, n_response = _count(tokenizer, prompt), _count(tokenizer, response)
        budget = limit - (len(ids) - n_prompt - n_response)  # what the template leaves
        if budget <= 0:
            raise ValueError(
                f"The 'max_length' parameter of reward ({limit} within the model's limit) "
                f"leaves no room beside the {template!r} template's own tokens; raise it."
            )
        keep_prompt, keep_response = split_budget(n_prompt, n_response, budget)
        prompt = keep_last_tokens(tokenizer, prompt, keep_prompt)
        response = keep_first_tokens(tokenizer, response, keep_response)
        features = self._encode(tokenizer, template, prompt, response)
        # A template that merges tokens across a cut can leave a token or two over, and
        # text that does not survive decode/encode (unknown characters decoded as "<unk>")
        # can even grow: cut a growing number of tokens, a bounded number of times.
        step = 1
        for _ in range(_MAX_RECUTS):
            if len(features["input_ids"]) <= limit:
                return features, True
            excess = len(features["input_ids"]) - limit
            n_prompt, n_response = _count(tokenizer, prompt), _count(tokenizer, response)
            if n_prompt == n_response == 0:
                raise ValueError(
                    f"The 'max_length' parameter of reward ({limit}) is shorter than the "
                    f"{template!r} template's own tokens; raise it."
                )
            cut = excess * step
            if n_prompt >= n_response:
                prompt = keep_last_tokens(tokenizer, prompt, max(n_prompt - cut, 0))
            else:
                response = keep_first_tokens(tokenizer, response, max(n_response - cut, 0))
            features = self._encode(tokenizer, template, prompt, response)
            step *= 2
        if len(features["input_ids"]) > limit:
            # last resort: drop tokens from the middle, keeping the template's start and end
            head = limit // 2
            features = {k: v[:head] + v[len(v) - (limit - head) :] for k, v in features.items()}
        return features, True

    # --- scoring -------------------------------------------------------------------------

    def score(self, records: Sequence[Record]) -> np.ndarray:
        """One reward per record, computed in batches of similar length."""
        self._check_settings()
        self.truncated_ = 0
        self.truncated_mask_ = np.zeros(len(records), dtype=bool)
        out = np.full(len(records), np.nan)
        if not records:
            return out
        import torch

        tokenizer, rm, model_type = self._load()
        device = rm.device
        template = self.resolve_template(tokenizer, model_type)
        self.template_ = template
        limit = self.max_length
        positions = getattr(rm.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limit = min(limit, positions)
        from instructmining.models.hf import quiet_transformers

        with quiet_transformers():  # "sequence longer than the maximum" before we cut it
            encoded = [self.encode(tokenizer, template, r, limit) for r in records]
        for i, (_, cut) in enumerate(encoded):
            self.truncated_mask_[i] = cut
        self.truncated_ = int(self.truncated_mask_.sum())

        # Right padding keeps positions as in an unpadded run. HF decoder classifiers
        # find the last token by `input_ids != config.pad_token_id`, so padding must
        # use exactly that id; without one they only accept one sequence at a time.
        pad_id = getattr(rm.config, "pad_token_id", None)
        step = self.batch_size
        if pad_id is None:
            pad_id = tokenizer.pad_token_id
            if pad_id is None:
                pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
            if model_type != OASST_MODEL_TYPE or self.trust_remote_code:
                step = 1
        order = np.argsort([len(f["input_ids"]) for f, _ in encoded], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), step):
                idx = order[start : start + step]
                batch = [encoded[i][0] for i in idx]
                width = max(len(f["input_ids"]) for f in batch)
                inputs = {
                    "input_ids": torch.full((len(batch), width), pad_id, dtype=torch.long),
                    "attention_mask": torch.zeros((len(batch), width), dtype=torch.long),
                }
                if "token_type_ids" in batch[0]:
                    inputs["token_type_ids"] = torch.zeros((len(batch), width), dtype=torch.long)
                for row, f in enumerate(batch):
                    n = len(f["input_ids"])
                    inputs["attention_mask"][row, :n] = 1
                    for key, values in f.items():
                        inputs[key][row, :n] = torch.tensor(values, dtype=torch.long)
                result = rm(**{k: v.to(device) for k, v in inputs.items()})
                logits = result if torch.is_tensor(result) else result.logits
                out[idx] = logits.float().reshape(len(batch), -1)[:, 0].cpu().numpy()
        if not np.isfinite(out).all():
            raise InstructMiningError(
                f"reward: {self.model!r} gave non-finite scores in {rm.dtype}; "
                "use --dtype fp32 (or bf16 on a GPU)"
            )
        return out
