import json

import numpy as np
import pytest

from instructmining.indicators.knn import (
    _fit_tfidf_svd,
    _tfidf_svd_embed,
    example_text,
    kth_neighbor_distance,
)
from instructmining.indicators.registry import create
from instructmining.records import make_record

WORDS = [
    "apple",
    "river",
    "cloud",
    "stone",
    "music",
    "paper",
    "light",
    "garden",
    "window",
    "silver",
    "bread",
    "ocean",
]


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(3, 12)))
        out.append(make_record(f"Describe item {i % 5}", output=" ".join(words)))
    return out


def _brute(emb, k):
    """k-th smallest Euclidean distance to another row, by sorting every pair."""
    n = len(emb)
    out = np.full(n, np.nan)
    for i in range(n):
        d = sorted(float(np.sqrt(((emb[i] - emb[j]) ** 2).sum())) for j in range(n) if j != i)
        if len(d) >= k:
            out[i] = d[k - 1]
    return out


@pytest.mark.parametrize("k", [1, 3, 6])
def test_kth_distance_equals_brute_force(k):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(40, 7))
    emb[5] = emb[6]  # a duplicate: distance 0 to its twin, itself still excluded
    got = kth_neighbor_distance(emb, emb, k, np.arange(len(emb)))
    np.testing.assert_allclose(got, _brute(emb, k), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dims", [256, 5])  # the TF-IDF space itself; a truncated SVD
def test_knn6_equals_brute_force_in_its_space(dims):
    records = _records(30)
    texts = [example_text(r) for r in records]
    space = _fit_tfidf_svd(texts, dims)
    assert (space[1] is None) == (dims == 256)
    emb = _tfidf_svd_embed(space, texts)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0)
    got = create("knn6", dims=dims).score(records)
    np.testing.assert_allclose(got, _brute(emb, 6), atol=1e-7)
    assert got.dtype == np.float64 and np.all(np.isfinite(got))


def test_order_invariant_and_fewer_than_k_is_nan():
    records = _records(25, seed=3)
    ind = create("knn6")
    a = ind.score(records)
    perm = np.random.default_rng(0).permutation(len(records))
    b = ind.score([records[i] for i in perm])
    np.testing.assert_allclose(b, a[perm], atol=1e-12)
    assert np.isnan(create("knn6").score(records[:6])).all()  # 5 others < k
    assert not np.isnan(create("knn6").score(records[:7])).any()
    assert create("knn6", k=2).score(records[:3]).shape == (3,)
    assert create("knn6").score([]).shape == (0,)
    with pytest.raises(ValueError, match="'k' parameter of knn6"):
        create("knn6", k=0).score(records)


def test_reference_set_equals_self_set_when_it_is_the_same_data(tmp_path):
    records = _records(20, seed=4)
    ref = tmp_path / "ref.jsonl"
    ref.write_text(
        "".join(json.dumps(r.to_dict() | {"id": f"r{i}"}) + "\n" for i, r in enumerate(records))
    )
    own = create("knn6", k=3).score(records)
    ind = create("knn6", k=3, reference=str(ref))
    assert not ind.set_dependent() and create("knn6").set_dependent()
    against = ind.score(records)
    np.testing.assert_allclose(against, own, atol=1e-9)
    # record-level with a reference: chunks give the same values
    np.testing.assert_allclose(
        np.concatenate([ind.score(records[:7]), ind.score(records[7:])]), against, atol=1e-12
    )
    # a record not in the reference uses all of its rows
    new = make_record("Describe item 9", output="apple apple river")
    texts = [example_text(r) for r in records]
    space = _fit_tfidf_svd(texts, 256)
    e_ref = _tfidf_svd_embed(space, texts)
    e_new = _tfidf_svd_embed(space, [example_text(new)])
    want = np.sort(np.linalg.norm(e_ref - e_new, axis=1))[2]
    assert ind.score([new])[0] == pytest.approx(want, abs=1e-9)
    assert "reference" in ind.fingerprints()


def test_sentence_transformer_backend_matches_direct_encoding(tiny_sentence_transformer):
    from sentence_transformers import SentenceTransformer

    records = _records(12, seed=5)
    ind = create("knn6", model=str(tiny_sentence_transformer), device="cpu", batch_size=4)
    assert ind.backend == "sentence-transformers"
    got = ind.score(records)
    st = SentenceTransformer(str(tiny_sentence_transformer), device="cpu")
    emb = st.encode([example_text(r) for r in records], normalize_embeddings=True)
    np.testing.assert_allclose(got, _brute(np.asarray(emb, dtype=np.float64), 6), atol=1e-5)
    # batch size is runtime-only: same key, same values
    other = create("knn6", model=str(tiny_sentence_transformer), device="cpu", batch_size=5)
    assert other.key() == ind.key()
    np.testing.assert_allclose(other.score(records), got, atol=1e-5)
    assert ind.truncated_ == 0


def test_sentence_transformer_truncation_is_counted(tiny_sentence_transformer):
    records = _records(8, seed=6)
    ind = create("knn6", model=str(tiny_sentence_transformer), device="cpu", max_length=6)
    ind.score(records)
    assert ind.truncated_ == int(ind.truncated_mask_.sum()) > 0


def test_knn6_on_real_data_matches_sklearn(shared_data):
    from sklearn.neighbors import NearestNeighbors

    rows = json.loads((shared_data / "pools" / "dolly_3k.json").read_text())[:300]
    records = [make_record(r["instruction"], r["input"], r["output"]) for r in rows]
    texts = [example_text(r) for r in records]
    emb = _tfidf_svd_embed(_fit_tfidf_svd(texts, 256), texts)
    dist, _ = NearestNeighbors(n_neighbors=7, algorithm="brute").fit(emb).kneighbors(emb)
    assert _fit_tfidf_svd(texts, 256)[1] is not None  # 300 texts: the SVD path
    np.testing.assert_allclose(create("knn6").score(records), dist[:, 6], atol=1e-6)


def test_degenerate_spaces():
    # no word at all: every example sits at the origin
    assert create("knn6", k=1).score(
        [make_record("!"), make_record("?", output="...")]
    ).tolist() == [
        0.0,
        0.0,
    ]
    # fewer texts or words than dimensions: the TF-IDF space itself
    got = create("knn6", k=1).score([make_record("a"), make_record("a"), make_record("b")])
    assert got[0] == got[1] == 0.0 and got[2] == pytest.approx(np.sqrt(2.0))


def test_embed_is_the_space_score_uses(tmp_path):
    records = _records(15, seed=8)
    ind = create("knn6", k=2, dims=4)
    emb = ind.embed(records)
    assert emb.shape[0] == 15 and np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    np.testing.assert_allclose(ind.score(records), _brute(emb, 2), atol=1e-9)
    assert create("knn6").embed([]).shape == (0, 0)
