"""The sentence-transformers embedder (`st:` scheme, and a bare name for an embedder).

The model is loaded once per (source, dtype, device), never with remote code,
in eval mode and cast to the policy's dtype. Texts are encoded in slices of
1,024 sorted by length (little padding per `encode` batch), under
`inference_mode`, normalised to unit length by sentence-transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from instructmining.models.backends import LoadRequest
from instructmining.models.roles import LoadKey, Progress

_SLICE = 1024  # texts per encode() call: one progress step


class SentenceTransformerEmbedder:
    """An `Embedder` over one loaded `SentenceTransformer`."""

    def __init__(self, model: Any, key: LoadKey) -> None:
        self.model = model
        self.key = key
        self._default_limit = model.max_seq_length

    def _limit(self, max_length: int | None) -> int | None:
        limit = self._default_limit if max_length is None else max_length
        self.model.max_seq_length = limit
        return limit

    def truncated(self, texts: Sequence[str], *, max_length: int | None = None) -> np.ndarray:
        """Which texts have more tokens (special ones included) than the limit."""
        limit = self._limit(max_length)
        if limit is None or not texts:
            return np.zeros(len(texts), dtype=bool)
        from instructmining.models.hf import quiet_transformers

        with quiet_transformers():  # counting long texts is not an error
            ids = self.model.tokenizer(list(texts), add_special_tokens=True).input_ids
        return np.array([len(x) > limit for x in ids], dtype=bool)

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        import torch

        self._limit(max_length)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.model.get_embedding_dimension() or 0), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), _SLICE):
                part = order[start : start + _SLICE]
                emb = self.model.encode(
                    [texts[i] for i in part],
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                out[part] = np.asarray(emb, dtype=np.float32)
                if progress is not None:
                    progress(len(part))
        return out


def sentence_transformer(request: LoadRequest) -> SentenceTransformerEmbedder:
    """Factory of the `st:` scheme."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - part of the models extra
        raise ImportError(
            f"{request.indicator} with a model needs sentence-transformers: "
            "pip install 'instructmining[models]'"
        ) from exc
    from instructmining.models.hf import quiet_transformers

    with quiet_transformers():
        st = SentenceTransformer(request.source, device=request.device, trust_remote_code=False)
    st.eval()
    return SentenceTransformerEmbedder(st.to(request.torch_dtype), request.key)
