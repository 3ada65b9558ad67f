"""Seq2seq yes/no scoring (`hf:` scheme), as UniEval reads its T5 evaluators.

The value of a text is P(Yes) / (P(Yes) + P(No)) over the first decoder step
(the decoder fed only its start token), where "Yes" and "No" are the first
tokens the tokenizer gives for those words; computed as
sigmoid(logit_Yes - logit_No), which equals the ratio of the two softmax
probabilities. Inputs longer than `max_length` tokens are cut from the right by
the tokenizer (its end token kept). Batches are length-sorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from instructmining.models.backends import LoadRequest
from instructmining.models.roles import LoadKey, YesNoScores


class Seq2SeqYesNoScorer:
    """A `YesNoScorer` over one loaded seq2seq model (see the module docstring)."""

    def __init__(self, tokenizer: Any, model: Any, yes: int, no: int, key: LoadKey) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.yes = yes
        self.no = no
        self.key = key

    def score(
        self, texts: Sequence[str], *, max_length: int = 1024, batch_size: int = 8
    ) -> YesNoScores:
        import torch

        from instructmining.models.hf import quiet_transformers

        tokenizer, model = self.tokenizer, self.model
        out = np.full(len(texts), np.nan)
        with quiet_transformers():
            full = tokenizer(list(texts)).input_ids
        lengths = np.array([len(ids) for ids in full])
        truncated = lengths > max_length
        start_id = model.config.decoder_start_token_id
        if start_id is None:
            start_id = model.config.pad_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode():
            for begin in range(0, len(order), batch_size):
                idx = order[begin : begin + batch_size]
                # the tokenizer's right-side truncation keeps its end token
                with quiet_transformers():
                    enc = tokenizer(
                        [texts[i] for i in idx],
                        max_length=max_length,
                        truncation=True,
                        padding=True,
                        return_tensors="pt",
                    )
                if enc.input_ids.shape[1] == 0:  # pragma: no cover - a tokenizer adding nothing
                    enc["input_ids"] = torch.full((len(idx), 1), pad_id)
                    enc["attention_mask"] = torch.ones((len(idx), 1), dtype=torch.long)
                decoder = torch.full((len(idx), 1), start_id, dtype=torch.long)
                logits = model(
                    input_ids=enc.input_ids.to(model.device),
                    attention_mask=enc.attention_mask.to(model.device),
                    decoder_input_ids=decoder.to(model.device),
                ).logits[:, 0, :]
                margin = logits[:, self.yes].float() - logits[:, self.no].float()
                out[idx] = torch.sigmoid(margin).cpu().numpy()
        return YesNoScores(out, np.asarray(truncated, dtype=bool))


def yes_no_scorer(request: LoadRequest) -> Seq2SeqYesNoScorer:
    """Factory of the yes/no-scorer role (`hf:`): tokenizer, model, the Yes and No token ids."""
    try:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - part of the models extra
        raise ImportError(
            f"the {request.indicator} indicator needs transformers: "
            "pip install 'instructmining[models]'"
        ) from exc
    from instructmining.models.hf import dtype_kwarg, quiet_transformers

    spec = request.source
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
        model = AutoModelForSeq2SeqLM.from_pretrained(
            spec, trust_remote_code=False, **{dtype_kwarg(): request.torch_dtype}
        )
    yes = tokenizer("Yes").input_ids[0]
    no = tokenizer("No").input_ids[0]
    if yes == no:
        raise ValueError(f"{spec!r}: the tokenizer gives one token for 'Yes' and 'No'")
    return Seq2SeqYesNoScorer(tokenizer, model.to(request.device).eval(), yes, no, request.key)
