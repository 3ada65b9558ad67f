"""Token scoring under a causal LM: the negative log-likelihood of a response.

One scorer serves every indicator that reads a causal LM (perplexity, IFD):
the model is loaded once per process, responses are scored in length-sorted
batches under a token budget (little padding), under `inference_mode`, in
bf16 where the device supports it, and the vocabulary projection is applied
only at the positions that are scored. Results are memoised per process, so
perplexity and IFD share the forward pass over (prompt, response).

Prompt layouts (`template`):
- "chat": the tokenizer's chat template, one user turn holding the instruction
  and input (`Record.prompt`), then the assistant header;
- "plain": `"{instruction}\\n\\n{input}\\n\\n"`, BOS first when the tokenizer
  has one;
- "auto": "chat" when the tokenizer has a chat template, else "plain".
The response is tokenised on its own (no special tokens), so the scored tokens
are the same with or without a prompt. Scored "alone" (`conditional=False`),
the response follows only the BOS token (EOS when there is no BOS).

Factories of the `hf:` and `gguf:` schemes (`models.backends`): `causal_lm`
(the loaded model and tokenizer, shared with generation) and `token_scorer`
(a `CausalScorer` per layout settings, sharing that model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from instructmining.models import backends
from instructmining.models.roles import (
    CAUSAL_LM,
    TOKEN_SCORER,
    CausalLM,
    LoadKey,
    Scored,
    TokenScorer,
)
from instructmining.records import Record

TEMPLATES = ("auto", "chat", "plain")
__all__ = ["TEMPLATES", "CausalScorer", "Scored", "causal_lm", "scorer_for", "token_scorer"]


class CausalScorer:
    """A `TokenScorer` under one causal LM checkpoint (see the module docstring).

    Built by `scorer_for` (shared, through the model cache) or directly from a
    model string (tests, benchmarks).
    """

    def __init__(
        self,
        model: str,
        *,
        indicator: str,
        device: str = "auto",
        dtype: str = "auto",
        template: str = "auto",
        max_length: int = 1024,
        token_budget: int = 8192,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(TEMPLATES)}; got {template!r}")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"The 'max_length' setting of {indicator} must be an int >= 2.")
        self.model = model
        self.indicator = indicator
        self.device = device
        self.dtype = dtype
        self.template = template
        self.max_length = max_length
        self.token_budget = max(token_budget, max_length)
        self.key: LoadKey | None = None  # set when built through the model cache
        self._request: backends.LoadRequest | None = None
        self._memo: dict[tuple[bool, str, str], tuple[float, int, bool]] = {}

    # --- loading --------------------------------------------------------------------------

    def load(self) -> tuple[Any, Any, str]:
        """(tokenizer, model, device), loaded once per process and checkpoint."""
        req = self._request
        if req is None:
            lm = backends.load(
                CAUSAL_LM,
                self.model,
                indicator=self.indicator,
                device=self.device,
                dtype=self.dtype,
            )
        else:
            lm = backends.load_source(
                CAUSAL_LM,
                req.ref,
                req.source,
                device=req.device,
                dtype=req.key.dtype,
                indicator=self.indicator,
            )
        return lm.tokenizer, lm.model, lm.device

    def layout(self, tokenizer: Any) -> str:
        """The prompt layout in use ("chat" or "plain")."""
        if self.template != "auto":
            return self.template
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"

    # --- encoding -------------------------------------------------------------------------

    def _prefix(self, tokenizer: Any, record: Record, conditional: bool) -> list[int]:
        start = tokenizer.bos_token_id
        if start is None:
            start = tokenizer.eos_token_id
        if not conditional:
            return [start] if start is not None else []
        if self.layout(tokenizer) == "chat":
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": record.prompt}],
                tokenize=False,
                add_generation_prompt=True,
            )
            return list(tokenizer(text, add_special_tokens=False).input_ids)
        ids = list(tokenizer(record.prompt + "\n\n", add_special_tokens=True).input_ids)
        bos = tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def _encode(
        self, tokenizer: Any, record: Record, conditional: bool, limit: int
    ) -> tuple[list[int], int, bool]:
        prompt = self._prefix(tokenizer, record, conditional)
        output = list(tokenizer(record.output, add_special_tokens=False).input_ids)
        truncated = len(prompt) + len(output) > limit
        if truncated:  # the output keeps its start, the prompt its end
            output = output[: limit - 1]
            prompt = prompt[-(limit - len(output)) :] if limit > len(output) else []
        if not prompt and output:  # nothing predicts the first token: leave it unscored
            return output, 1, truncated
        return prompt + output, len(prompt), truncated

    # --- scoring --------------------------------------------------------------------------

    def score(
        self,
        records: Sequence[Record],
        *,
        conditional: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> Scored:
        """Summed NLL of each record's output tokens, given its prompt or alone."""
        n = len(records)
        nll = np.full(n, np.nan)
        count = np.zeros(n, dtype=np.int64)
        trunc = np.zeros(n, dtype=bool)
        todo: list[int] = []
        for i, r in enumerate(records):
            hit = self._memo.get((conditional, r.prompt, r.output))
            if hit is None:
                todo.append(i)
            else:
                nll[i], count[i], trunc[i] = hit
        if todo:
            self._run([records[i] for i in todo], todo, conditional, nll, count, trunc, progress)
            for i in todo:
                r = records[i]
                self._memo[(conditional, r.prompt, r.output)] = (nll[i], int(count[i]), trunc[i])
        return Scored(nll, count, trunc)

    def _run(
        self,
        records: Sequence[Record],
        index: Sequence[int],
        conditional: bool,
        nll: np.ndarray,
        count: np.ndarray,
        trunc: np.ndarray,
        progress: Callable[[int], None] | None,
    ) -> None:
        import torch

        tok, lm, device = self.load()
        limit = self.max_length
        positions = getattr(lm.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 1:
            limit = min(limit, positions)
        encoded = [self._encode(tok, r, conditional, limit) for r in records]
        for j, (_, _, t) in enumerate(encoded):
            trunc[index[j]] = t
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        order = [j for j in sorted(range(len(records)), key=lambda j: -len(encoded[j][0]))]
        batches: list[list[int]] = []
        for j in order:
            seq, n_prompt, _ = encoded[j]
            if len(seq) <= n_prompt:  # empty output: nothing to score
                if progress:
                    progress(1)
                continue
            # longest first, so the first row of a batch sets its width
            if batches and (len(batches[-1]) + 1) * len(encoded[batches[-1][0]][0]) <= (
                self.token_budget
            ):
                batches[-1].append(j)
            else:
                batches.append([j])
        head = split_head(lm)
        with torch.inference_mode():
            for batch in batches:
                width = len(encoded[batch[0]][0])
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, j in enumerate(batch):
                    seq = encoded[j][0]
                    ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[row, : len(seq)] = 1
                ids, mask = ids.to(device), mask.to(device)
                rows, cols, targets = [], [], []
                for row, j in enumerate(batch):
                    seq, n_prompt, _ = encoded[j]
                    span = range(n_prompt - 1, len(seq) - 1)  # position t predicts token t+1
                    rows += [row] * len(span)
                    cols += list(span)
                    targets += seq[n_prompt:]
                r_idx = torch.tensor(rows, device=device)
                c_idx = torch.tensor(cols, device=device)
                logits = position_logits(lm, head, ids, mask, r_idx, c_idx)
                losses = torch.nn.functional.cross_entropy(
                    logits, torch.tensor(targets, device=device), reduction="none"
                ).cpu()
                at = 0
                for j in batch:
                    seq, n_prompt, _ = encoded[j]
                    k = len(seq) - n_prompt
                    nll[index[j]] = float(losses[at : at + k].double().sum())
                    count[index[j]] = k
                    at += k
                if progress:
                    progress(len(batch))


def split_head(lm: Any) -> tuple[Any, Any] | None:
    """(decoder body, output projection) when logits are exactly proj(body(x)); else None.

    Projecting only the scored positions saves the vocabulary matmul (and the
    vocabulary-wide softmax) on every prompt and padding token: about a fifth of a
    135M model's work, more of its memory traffic. Architectures that post-process
    logits (soft-capping, scaling) take the full forward pass instead. A PEFT
    (LoRA) wrapper is looked through: its adapters sit inside the body.
    """
    get_base = getattr(lm, "get_base_model", None)
    if callable(get_base):
        lm = get_base()
    cfg = lm.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    if type(lm).__name__ not in _PLAIN_HEADS:
        return None
    try:
        body, proj = lm.get_decoder(), lm.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if body is None or proj is None:
        return None
    return body, proj


def position_logits(
    lm: Any, head: tuple[Any, Any] | None, ids: Any, mask: Any, rows: Any, cols: Any
) -> Any:
    """float32 logits at the (row, position) pairs `rows`, `cols` of a batch.

    With `head` (from `split_head`), only those positions go through the
    vocabulary projection; without it, the full forward pass is indexed. Both give
    the same values; gradients flow through either.
    """
    if head is not None:
        body, proj = head
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        return proj(hidden[rows, cols]).float()
    return lm(input_ids=ids, attention_mask=mask).logits[rows, cols].float()


#: causal LM classes whose logits are exactly lm_head(final hidden state)
_PLAIN_HEADS = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "GPT2LMHeadModel",
        "GPTNeoXForCausalLM",
        "PhiForCausalLM",
        "Phi3ForCausalLM",
    }
)


def causal_lm(request: backends.LoadRequest) -> CausalLM:
    """Factory of the causal-LM role (`hf:` folder or hub id, `gguf:` file), never remote code."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the models extra
        raise ImportError(
            f"{request.indicator} with a model needs transformers: "
            "pip install 'instructmining[models]'"
        ) from exc
    from instructmining.models.hf import dtype_kwarg, quiet_transformers

    folder, extra = request.source, {}
    if request.ref.scheme == "gguf":  # de-quantised on loading, as the catalogue converts it
        folder, extra = str(Path(request.source).parent), {"gguf_file": Path(request.source).name}
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **extra)
        lm: Any = AutoModelForCausalLM.from_pretrained(
            folder, trust_remote_code=False, **extra, **{dtype_kwarg(): request.torch_dtype}
        )
    return CausalLM(tok, lm.to(request.device).eval(), request.device, request.key)


def token_scorer(request: backends.LoadRequest) -> CausalScorer:
    """Factory of the token-scorer role: a `CausalScorer` bound to `request.options`."""
    scorer = CausalScorer(
        str(request.ref),
        indicator=request.indicator,
        device=request.device,
        dtype=request.key.dtype,
        **request.options,
    )
    scorer.key, scorer._request = request.key, request
    return scorer


def scorer_for(indicator: Any) -> TokenScorer:
    """The shared scorer for an indicator with model/device/dtype/template/length settings.

    One per (checkpoint, dtype, device, layout settings) in this process, so
    perplexity and ifd share its memo (the conditional pass).
    """
    scorer: TokenScorer = backends.load(
        TOKEN_SCORER,
        str(indicator.model),
        indicator=indicator.name,
        device=indicator.device,
        dtype=indicator.dtype,
        template=indicator.template,
        max_length=indicator.max_length,
        token_budget=indicator.token_budget,
    )
    return scorer
