"""KNN-k: distance from each example to its k-th nearest neighbour in an embedding space.

The space is TF-IDF + truncated SVD fitted here (`tfidf-svd`), or an `Embedder`
from `instructmining.models` (`st:NAME_OR_PATH`, a bare name, or a plugin's
scheme); this module measures distances in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from instructmining.indicators.base import Indicator
from instructmining.indicators.keys import FIT_SAMPLE
from instructmining.indicators.registry import register
from instructmining.models.backends import TFIDF_SVD, load, parse
from instructmining.models.roles import EMBEDDER
from instructmining.neighbours import (
    check_index,
    kth_neighbor_distance,
    kth_neighbours,
    resolve_index,
)
from instructmining.records import Record, content_id

__all__ = ["FIT_SAMPLE", "KNN", "example_text", "kth_neighbor_distance"]


def example_text(record: Record) -> str:
    """The text embedded for a record: instruction, input and output, blank-line separated."""
    return "\n\n".join(t for t in (record.instruction, record.input, record.output) if t)


@register
class KNN(Indicator):
    """Distance to the k-th nearest other example (default k=6). Higher = more unusual example.

    Source: the paper's KNN-6 (SentenceBERT embedding space); in rule v1 with a
    negative coefficient. Reads the whole example (instruction, input, output).
    Backends: "tfidf-svd" (offline: TF-IDF with sublinear term frequency,
    truncated SVD to `dims` dimensions, rows L2-normalised; the space is fitted
    on the scored set, or on the reference set; a set with at most `dims` texts
    or words keeps the TF-IDF space itself) and a sentence-transformers
    checkpoint (`model`, embeddings L2-normalised). Distances are exact
    Euclidean distances on the unit vectors (0..2). Neighbours are the other
    records of the scored set (dataset-level) or, with `reference`, the records
    of that file (one copy of the record itself excluded). NaN when fewer than k
    neighbours exist. Cost: O(n^2 d); ~3 s for 10k records (tfidf-svd) on 2 cores.
    `index` picks the neighbour search (`instructmining.neighbours`): "auto" is
    exact up to `neighbours.EXACT_MAX` records and approximate faiss indexes
    above (IVF, then HNSW where IVF misses the recall target; the measured recall
    goes to the run's summary); "exact", "hnsw" or "ivf" force one. Only an approximate search enters `params()`, so exact
    values keep their cache keys. With `reference`, "auto" stays exact.
    """

    name = "knn6"
    description = "distance to the k-th (6th) nearest other example in an embedding space"
    reads = ("instruction", "input", "output")
    direction = "higher = farther from other examples (more unusual)"
    dataset_level = True
    needs_model = True
    backends = (TFIDF_SVD, "sentence-transformers")
    model_role = EMBEDDER
    runtime_settings = ("device", "batch_size")

    def __init__(
        self,
        *,
        k: int = 6,
        model: str | None = None,
        reference: str | None = None,
        dims: int = 256,
        device: str = "auto",
        batch_size: int = 64,
        max_length: int | None = None,
        dtype: str = "auto",
        index: str = "auto",
    ) -> None:
        self.k = k
        self.model = model
        self.reference = reference
        self.dims = dims
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.index = index
        self.n_records_: int | None = None
        self.neighbours_: dict[str, Any] | None = None
        self._reference_cache: tuple[Any, np.ndarray, list[str]] | None = None
        self._space: Any = None
        self._fitted: dict[str, np.ndarray] = {}
        self._fit_done = False
        self._scheme()  # a wrong scheme fails here

    def _scheme(self) -> str:
        return parse(self.model or TFIDF_SVD, EMBEDDER, indicator=self.name).scheme

    @property
    def backend(self) -> str:
        scheme = self._scheme()
        return "sentence-transformers" if scheme == "st" else scheme

    def set_dependent(self) -> bool:
        return self.reference is None

    def params(self) -> dict[str, Any]:
        """Settings that fix the values of the chosen backend (others would only split caches)."""
        unused = ("max_length", "dtype") if self.backend == TFIDF_SVD else ("dims",)
        out = {k: v for k, v in super().params().items() if k not in (*unused, "index")}
        search = self._search()
        if search != "exact":  # approximate values never share a key with exact ones
            out["index"] = search
        if self._sampled():  # a space fitted on a sample gives other values than the set's
            out["fit_sample"] = FIT_SAMPLE
        return out

    def expect(self, n_records: int) -> None:
        self.n_records_ = n_records

    def _search(self) -> str:
        """The neighbour search this configuration runs on the expected set."""
        check_index(self.index)
        if self.index == "auto" and self.reference is not None:
            return "exact"
        return resolve_index(self.index, self.n_records_)

    def _check(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"The 'k' parameter of knn6 must be an int >= 1. Got {self.k!r}.")
        if not isinstance(self.dims, int) or self.dims < 1:
            raise ValueError(
                f"The 'dims' parameter of knn6 must be an int >= 1. Got {self.dims!r}."
            )
        check_index(self.index)

    def score(self, records: Sequence[Record]) -> np.ndarray:
        self._check()
        self.truncated_ = 0
        self.truncated_mask_ = np.zeros(len(records), dtype=bool)
        if not records:
            return np.empty(0)
        if self.reference is None:
            return self.score_phased(records)
        texts = [example_text(r) for r in records]
        space, ref_emb, ref_ids = self._reference_space()
        emb = self._embed(space, texts)
        where: dict[str, int] = {}
        for j, rid in enumerate(ref_ids):
            where.setdefault(rid, j)
        exclude = np.array(
            [where.get(content_id(r.instruction, r.input, r.output), -1) for r in records]
        )
        return self._search_kth(emb, ref_emb, exclude)

    # --- phases (scored set, no reference): fit the space, embed per batch, search ------------

    def phased(self) -> bool:
        return self.reference is None

    def fit_size(self) -> int | None:
        """tfidf-svd fits its space on at most FIT_SAMPLE records; a model needs no fit."""
        return FIT_SAMPLE if self.backend == TFIDF_SVD else None

    def _sampled(self) -> bool:
        return self.fit_size() is not None and (self.n_records_ or 0) > FIT_SAMPLE

    def fit(self, records: Sequence[Record], n_total: int) -> None:
        self._check()
        self.expect(n_total)
        texts = [example_text(r) for r in records]
        self._space = None
        self._fitted = {}
        self._fit_done = True
        if n_total <= len(records):
            # the whole set: embed it in the pass that fits the space (exactly the values
            # of a one-call run); `transform` looks the rows up
            emb = self._fit_embed(texts) if texts else np.empty((0, 0))
            self._fitted = {t: emb[i] for i, t in enumerate(texts)}
        else:
            self._space = _fit_tfidf_svd(texts, self.dims)

    def transform(self, records: Sequence[Record]) -> np.ndarray:
        """Embeddings: float64 rows of the fitted space, or the model's float32 rows."""
        self._check()
        self.truncated_ = 0
        self.truncated_mask_ = np.zeros(len(records), dtype=bool)
        texts = [example_text(r) for r in records]
        if self.backend != TFIDF_SVD:
            return self._embed(self._embedder(), texts, native=True)
        if self._fitted:
            return np.stack([self._fitted[t] for t in texts]) if texts else np.empty((0, 0))
        if not self._fit_done:
            raise RuntimeError("knn6: transform before fit")
        # a sampled space: float32 rows, as the approximate search reads them
        return _tfidf_svd_embed(self._space, texts).astype(np.float32)

    def features_cacheable(self) -> bool:
        return self.backend != TFIDF_SVD

    def finish(self, features: np.ndarray) -> np.ndarray:
        n = len(features)
        self.expect(n)
        if n == 0:
            return np.empty(0)
        return self._search_kth(features, features, np.arange(n))

    def _search_kth(self, emb: np.ndarray, base: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """k-th distances by this configuration's search; what it did goes to `neighbours_`."""
        # the same choice as `_search`: "auto" resolves on the base's size (the scored set)
        kind = "exact" if self.index == "auto" and self.reference is not None else self.index
        found = kth_neighbours(emb, base, k=self.k, exclude=exclude, index=kind)
        self.neighbours_ = None
        if found.recall is not None or found.note:  # exact search as always: nothing to say
            self.neighbours_ = {
                "index": found.index,
                "recall": found.recall,
                "sampled": found.sampled,
                "note": found.note,
                "text": found.describe(),
            }
        return found.distances

    def embed(self, records: Sequence[Record]) -> np.ndarray:
        """Unit-length embeddings of the records in this configuration's space.

        The space is fitted on `records` (or on the reference set); `score` takes
        its distances in exactly this space (selection's diversity pass reuses it).
        """
        self._check()
        texts = [example_text(r) for r in records]
        if not texts:
            return np.empty((0, 0))
        if self.reference is None:
            return self._fit_embed(texts)
        space, _, _ = self._reference_space()
        return self._embed(space, texts)

    # --- backends -------------------------------------------------------------------------

    def _reference_space(self) -> tuple[Any, np.ndarray, list[str]]:
        if self._reference_cache is None:
            from instructmining.readers import read_records

            refs = read_records(str(self.reference)).records
            texts = [example_text(r) for r in refs]
            space = self._fit_space(texts)
            emb = self._embed(space, texts, count_truncation=False)
            ids = [content_id(r.instruction, r.input, r.output) for r in refs]
            self._reference_cache = (space, emb, ids)
        return self._reference_cache

    def _fit_embed(self, texts: list[str]) -> np.ndarray:
        if self.backend != TFIDF_SVD:
            return self._embed(self._fit_space(texts), texts)
        # embed the sorted texts the space was fitted on, then put the rows back in input
        # order: one TF-IDF pass, and bit-identical values whatever the input order
        order = sorted(range(len(texts)), key=texts.__getitem__)
        emb = _tfidf_svd_embed(*_fit_tfidf_svd_matrix([texts[i] for i in order], self.dims))
        out = np.empty_like(emb)
        out[order] = emb
        return out

    def _fit_space(self, texts: list[str]) -> Any:
        if self.backend != TFIDF_SVD:
            return self._embedder()
        return _fit_tfidf_svd(texts, self.dims)

    def _embed(
        self, space: Any, texts: list[str], *, count_truncation: bool = True, native: bool = False
    ) -> np.ndarray:
        if self.backend == TFIDF_SVD:
            return _tfidf_svd_embed(space, texts)
        if count_truncation:
            self.truncated_mask_ = space.truncated(texts, max_length=self.max_length)
            self.truncated_ = int(self.truncated_mask_.sum())
        emb = space.embed(
            texts,
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=self.progress_ if count_truncation else None,
        )
        return np.asarray(emb) if native else np.asarray(emb, dtype=np.float64)

    def _embedder(self) -> Any:
        """The shared `Embedder` of this configuration's model."""
        return load(
            EMBEDDER, str(self.model), indicator=self.name, device=self.device, dtype=self.dtype
        )


def _fit_tfidf_svd(texts: list[str], dims: int) -> Any:
    """TF-IDF + truncated SVD fitted on `texts` in a canonical (sorted) order."""
    return _fit_tfidf_svd_matrix(sorted(texts), dims)[0]


def _fit_tfidf_svd_matrix(ordered: list[str], dims: int) -> tuple[Any, Any]:
    """(space, TF-IDF matrix of `ordered`): the space fitted on `ordered` as given."""
    try:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from threadpoolctl import threadpool_limits
    except ImportError as exc:  # pragma: no cover - part of the offline extra
        raise ImportError(
            "knn6 (tfidf-svd) needs scikit-learn: pip install 'instructmining[offline]'"
        ) from exc

    vectorizer = TfidfVectorizer(sublinear_tf=True, token_pattern=r"(?u)\b\w+\b", dtype=np.float64)
    try:
        matrix = vectorizer.fit_transform(ordered)
    except ValueError:  # no word at all in any text: every example sits at the origin
        return None, ordered
    if min(matrix.shape) <= dims:
        # rows span at most `dims` dimensions: the SVD could only rotate them (or drop
        # information), so distances are taken in the TF-IDF space itself
        return (vectorizer, None), matrix
    # sorted input (by the callers) makes the randomized SVD independent of input order
    svd = TruncatedSVD(n_components=dims, algorithm="randomized", random_state=0)
    # The fit's QR/LU factorisations of a tall, thin matrix synchronise threads at every
    # panel and gain little from them; on a busy 2-core machine two BLAS threads made the
    # fit 6x slower (34 s vs 5 s for 9k texts), so it runs on one.
    with threadpool_limits(limits=1, user_api="blas"):
        svd.fit(matrix)
    return (vectorizer, svd), matrix


def _tfidf_svd_embed(space: Any, texts: Any) -> np.ndarray:
    """Unit-length rows for `texts` (strings, or their TF-IDF matrix in this space)."""
    if space is None:
        return np.zeros((len(texts) if isinstance(texts, list) else texts.shape[0], 1))
    vectorizer, svd = space
    matrix = vectorizer.transform(texts) if isinstance(texts, list) else texts
    emb = matrix.toarray() if svd is None else svd.transform(matrix)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
