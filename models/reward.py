"""Reward models as pair scorers (`hf:` scheme): (prompt, response) -> one float.

A reward model (RM) is a one-output sequence classifier; any
`AutoModelForSequenceClassification` checkpoint with `num_labels=1` loads, and
the OpenAssistant Pythia layout (`"model_type": "gpt_neox_reward_model"`, which
transformers does not ship) is implemented here so it loads without remote code:
a GPT-NeoX trunk plus a linear head on the last attended token (or the mean
over tokens with `"pooling": "mean"`).

Input format (`template`): "oasst"
(`<|prompter|>{prompt}<|endoftext|><|assistant|>{response}<|endoftext|>`, EOS =
the tokenizer's), "chat" (the tokenizer's chat template, one user and one
assistant turn), "pair" (the tokenizer's sentence-pair encoding with segment
ids), or "auto": oasst when the tokenizer has `<|prompter|>`/`<|assistant|>`,
the config is an OpenAssistant RM or the checkpoint's name contains "oasst";
else chat when the tokenizer has a chat template; else pair.

Past `max_length` tokens (capped at the model's positions) prompt and response
share what the template leaves: the prompt is cut from the left down to half of
that room, then the response from the right, on token boundaries of each text
tokenised alone; the template's own tokens are kept. Batches are length-sorted
and right-padded with the model's pad id (HF decoder classifiers pool the last
non-pad token); a classifier without one runs one pair at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from instructmining.errors import InputError, InstructMiningError
from instructmining.models.backends import LoadRequest
from instructmining.models.roles import LoadKey, PairScores

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


def _features(tokenizer: Any, template: str, prompt: str, response: str) -> dict[str, list[int]]:
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


def encode_pair(
    tokenizer: Any,
    template: str,
    prompt: str,
    response: str,
    limit: int,
    *,
    indicator: str = "reward",
) -> tuple[dict[str, list[int]], bool]:
    """Model inputs of one pair in `template`, cut to `limit` tokens (features, truncated?).

    `features["input_ids"]` are the token ids; "pair" adds `token_type_ids` when
    the tokenizer makes them. `indicator` names the setting in errors.
    """
    features = _features(tokenizer, template, prompt, response)
    if len(features["input_ids"]) <= limit:
        return features, False
    ids = features["input_ids"]
    n_prompt, n_response = _count(tokenizer, prompt), _count(tokenizer, response)
    budget = limit - (len(ids) - n_prompt - n_response)  # what the template leaves
    if budget <= 0:
        raise ValueError(
            f"The 'max_length' parameter of {indicator} ({limit} within the model's limit) "
            f"leaves no room beside the {template!r} template's own tokens; raise it."
        )
    keep_prompt, keep_response = split_budget(n_prompt, n_response, budget)
    prompt = keep_last_tokens(tokenizer, prompt, keep_prompt)
    response = keep_first_tokens(tokenizer, response, keep_response)
    features = _features(tokenizer, template, prompt, response)
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
                f"The 'max_length' parameter of {indicator} ({limit}) is shorter than the "
                f"{template!r} template's own tokens; raise it."
            )
        cut = excess * step
        if n_prompt >= n_response:
            prompt = keep_last_tokens(tokenizer, prompt, max(n_prompt - cut, 0))
        else:
            response = keep_first_tokens(tokenizer, response, max(n_response - cut, 0))
        features = _features(tokenizer, template, prompt, response)
        step *= 2
    if len(features["input_ids"]) > limit:
        # last resort: drop tokens from the middle, keeping the template's start and end
        head = limit // 2
        features = {k: v[:head] + v[len(v) - (limit - head) :] for k, v in features.items()}
    return features, True


class HFPairScorer:
    """A `PairScorer` over one loaded reward model (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        model: Any,
        model_type: str | None,
        key: LoadKey,
        *,
        indicator: str = "reward",
        remote_code: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.model_type = model_type
        self.key = key
        self.indicator = indicator
        self.remote_code = remote_code

    def resolve_template(self, template: str = "auto") -> str:
        """The input format used for this checkpoint (`template`, with "auto" decided)."""
        if template != "auto":
            return template
        vocab = self.tokenizer.get_vocab()
        if (PROMPTER in vocab and ASSISTANT in vocab) or self.model_type == OASST_MODEL_TYPE:
            return "oasst"
        if "oasst" in self.key.source.lower():
            return "oasst"
        if getattr(self.tokenizer, "chat_template", None):
            return "chat"
        return "pair"

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        template: str = "auto",
        max_length: int = 1024,
        batch_size: int = 8,
    ) -> PairScores:
        """One reward per pair, computed in batches of similar length."""
        import torch

        from instructmining.models.hf import quiet_transformers

        tokenizer, rm = self.tokenizer, self.model
        template = self.resolve_template(template)
        limit = max_length
        positions = getattr(rm.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limit = min(limit, positions)
        with quiet_transformers():  # "sequence longer than the maximum" before we cut it
            encoded = [
                encode_pair(tokenizer, template, p, r, limit, indicator=self.indicator)
                for p, r in zip(prompts, responses, strict=True)
            ]
        truncated = np.array([cut for _, cut in encoded], dtype=bool)
        out = np.full(len(encoded), np.nan)
        # Right padding keeps positions as in an unpadded run. HF decoder classifiers
        # find the last token by `input_ids != config.pad_token_id`, so padding must
        # use exactly that id; without one they only accept one sequence at a time.
        pad_id = getattr(rm.config, "pad_token_id", None)
        step = batch_size
        if pad_id is None:
            pad_id = tokenizer.pad_token_id
            if pad_id is None:
                pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
            if self.model_type != OASST_MODEL_TYPE or self.remote_code:
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
                    for name, values in f.items():
                        inputs[name][row, :n] = torch.tensor(values, dtype=torch.long)
                result = rm(**{k: v.to(rm.device) for k, v in inputs.items()})
                logits = result if torch.is_tensor(result) else result.logits
                out[idx] = logits.float().reshape(len(batch), -1)[:, 0].cpu().numpy()
        return PairScores(out, truncated, template)


def pair_scorer(request: LoadRequest) -> HFPairScorer:
    """Factory of the pair-scorer role (`hf:`); remote code only when code asked for it."""
    try:
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            GPTNeoXConfig,
            PretrainedConfig,
        )
    except ImportError as exc:  # pragma: no cover - part of the models extra
        raise ImportError(
            f"the {request.indicator} indicator needs transformers: "
            "pip install 'instructmining[models]'"
        ) from exc
    from instructmining.models.hf import dtype_kwarg, quiet_transformers

    spec, remote = request.source, bool(request.options.get("trust_remote_code", False))
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=remote)
        raw, _ = PretrainedConfig.get_config_dict(spec)
        kwargs = {dtype_kwarg(): request.torch_dtype, "trust_remote_code": remote}
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
                raise InputError(
                    f"{request.indicator}: {spec!r} has {labels} outputs; a reward model has "
                    f"one (num_labels=1). Pass a reward model with --model "
                    f"{request.option or request.indicator}=ID_OR_PATH"
                )
    return HFPairScorer(
        tokenizer,
        rm.to(request.device).eval(),
        raw.get("model_type"),
        request.key,
        indicator=request.indicator,
        remote_code=remote,
    )
