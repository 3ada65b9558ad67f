"""Local-profile model throughput against plain loops, side by side on the same records.

Usage: python benchmarks/bench_local_models.py [--data FILE] [-n 200] [--dtype auto|fp32|bf16]

Measures, on the first N records of the data (default: alpaca_random_9k):
- perplexity of the response given the prompt (the `local` profile's causal LM,
  SmolLM2-135M-Instruct, chat template): our `CausalScorer` (length-sorted
  batches under a token budget, projection at the scored positions only) against
  a plain batch-1 fp32 transformers loop computing the same quantity; tokens/s
  counts every token through the model (prompt + response), and the Spearman
  correlation of the two sets of values checks that they agree;
- IFD: both passes of our scorer, against the plain loop doing both;
- MiniLM embeddings: our knn6 embedding path against a default
  `SentenceTransformer.encode` call (cosine agreement of the vectors).
With `--dtype bf16` (or auto on a CPU with bf16 units) the scorer's values are
also compared with its fp32 values (Spearman). Wall and CPU seconds are printed:
on a shared machine CPU time is the steadier number. Measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pools" / "alpaca_random_9k.json"
LM = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"


def _timed(fn):  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic)


def plain_loop(records, scorer, conditional: bool) -> tuple[np.ndarray, int]:  # type: ignore[no-untyped-def]
    """Mean NLL per output token, one record at a time, full fp32 logits: the naive way."""
    import torch
    from transformers import AutoModelForCausalLM

    from instructmining.models.loading import check_model_source

    tok, _, _ = scorer.load()
    lm = AutoModelForCausalLM.from_pretrained(
        check_model_source(LM, indicator="bench"), dtype=torch.float32
    ).eval()
    out = np.full(len(records), np.nan)
    tokens = 0
    with torch.no_grad():
        for i, r in enumerate(records):
            ids, n_prompt, _ = scorer._encode(tok, r, conditional, scorer.max_length)
            if len(ids) <= n_prompt:
                continue
            x = torch.tensor([ids])
            labels = x.clone()
            labels[0, :n_prompt] = -100
            out[i] = float(lm(input_ids=x, labels=labels).loss)
            tokens += len(ids)
    return out, tokens


def scorer_tokens(records, scorer, conditional: bool) -> int:  # type: ignore[no-untyped-def]
    tok, _, _ = scorer.load()
    return sum(len(scorer._encode(tok, r, conditional, scorer.max_length)[0]) for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("-n", type=int, default=200, help="records (default 200)")
    parser.add_argument("--dtype", default="auto", help="dtype of our scorer (default auto)")
    parser.add_argument(
        "--parts", default="lm,embed", help="lm (perplexity, IFD), embed (MiniLM); default both"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    from instructmining.models.causal import CausalScorer
    from instructmining.models.loading import resolve_dtype
    from instructmining.readers import read_records

    records = read_records(args.data).records[: args.n]
    print(
        f"{len(records)} records from {args.data.name}; our dtype {args.dtype} -> "
        f"{resolve_dtype(args.dtype, 'cpu')}"
    )

    if "lm" in parts:
        causal_part(records, CausalScorer(LM, indicator="bench", device="cpu", dtype=args.dtype))
        if str(resolve_dtype(args.dtype, "cpu")) != "torch.float32":
            print("(our values in reduced precision: the Spearman is the bf16-vs-fp32 agreement)")
    if "embed" in parts:
        embed_part(records, args.dtype)


def causal_part(records, ours) -> None:  # type: ignore[no-untyped-def]
    """Perplexity and IFD: our scorer against the plain batch-1 fp32 loop."""
    ours.load()  # load time is not throughput
    cond, w1, c1 = _timed(lambda: ours.score(records, conditional=True))
    alone, w2, _c2 = _timed(lambda: ours.score(records, conditional=False))
    t_cond = scorer_tokens(records, ours, True)
    t_alone = scorer_tokens(records, ours, False)

    (p_cond, pt_cond), pw1, pc1 = _timed(lambda: plain_loop(records, ours, True))
    (p_alone, pt_alone), pw2, _pc2 = _timed(lambda: plain_loop(records, ours, False))

    print("\nperplexity (response | prompt)")
    print(f"  ours : {t_cond / w1:8.0f} tok/s wall ({w1:.1f} s wall, {c1:.1f} s CPU)")
    print(f"  plain: {pt_cond / pw1:8.0f} tok/s wall ({pw1:.1f} s wall, {pc1:.1f} s CPU)")
    print(
        f"  speed-up {pw1 / w1:.2f}x; Spearman(ours, plain) = "
        f"{_spearman(cond.mean_nll, p_cond):.4f}"
    )
    print("IFD (both passes)")
    print(f"  ours : {(t_cond + t_alone) / (w1 + w2):8.0f} tok/s wall ({w1 + w2:.1f} s)")
    print(f"  plain: {(pt_cond + pt_alone) / (pw1 + pw2):8.0f} tok/s wall ({pw1 + pw2:.1f} s)")
    ifd_ours = np.exp(cond.mean_nll - alone.mean_nll)
    ifd_plain = np.exp(p_cond - p_alone)
    print(
        f"  speed-up {(pw1 + pw2) / (w1 + w2):.2f}x; Spearman(ours, plain) = "
        f"{_spearman(ifd_ours, ifd_plain):.4f}"
    )


def _knn_distances(emb: np.ndarray, k: int = 6) -> np.ndarray:
    """Euclidean distance of each unit vector to its k-th nearest other vector."""
    d = np.sqrt(np.maximum(2.0 - 2.0 * emb @ emb.T, 0.0))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def embed_part(records, dtype: str) -> None:  # type: ignore[no-untyped-def]
    """MiniLM: our knn6 embedding path against a default SentenceTransformer.encode."""
    from sentence_transformers import SentenceTransformer

    from instructmining.indicators.knn import KNN, example_text
    from instructmining.models.loading import check_model_source

    texts = [example_text(r) for r in records]
    knn = KNN(model=EMBEDDER, device="cpu", dtype=dtype)
    embedder = knn._embedder()
    emb_ours, ew, ec = _timed(
        lambda: np.asarray(embedder.embed(texts, batch_size=knn.batch_size), dtype=np.float64)
    )
    plain_st = SentenceTransformer(check_model_source(EMBEDDER, indicator="bench"), device="cpu")
    emb_plain, pw, pc = _timed(
        lambda: plain_st.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    )
    cos = np.sum(emb_ours * np.asarray(emb_plain, dtype=np.float64), axis=1)
    print("\nMiniLM embeddings")
    print(f"  ours : {len(texts) / ew:8.1f} texts/s ({ew:.1f} s wall, {ec:.1f} s CPU)")
    print(f"  plain: {len(texts) / pw:8.1f} texts/s ({pw:.1f} s wall, {pc:.1f} s CPU)")
    print(f"  speed-up {pw / ew:.2f}x; min cosine(ours, plain) = {cos.min():.5f}")
    knn_rho = _spearman(_knn_distances(emb_ours), _knn_distances(np.asarray(emb_plain, float)))
    print(f"  knn6 distances: Spearman(ours, plain fp32) = {knn_rho:.4f}")


if __name__ == "__main__":
    main()
