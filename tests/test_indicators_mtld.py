import json

import numpy as np
import pytest
from lexicalrichness import LexicalRichness

from instructmining.indicators.registry import create
from instructmining.records import make_record


def _records(outputs):
    return [make_record(f"task {i}", output=o) for i, o in enumerate(outputs)]


def test_mtld_matches_lexicalrichness_on_synthetic_text():
    outputs = [
        "the cat sat on the mat and the cat slept on the mat while the dog watched the cat",
        "Rivers flow; mountains rise. Rivers flow again, and again, and again!",
        "one two three four five six seven eight nine ten eleven twelve",
        "yes yes yes yes yes no no no",
    ]
    got = create("mtld").score(_records(outputs))
    want = [LexicalRichness(t).mtld(threshold=0.72) for t in outputs]
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    assert got.dtype == np.float64


def test_short_and_empty_texts_are_documented_values():
    got = create("mtld").score(_records(["", "   ", "!!!", "hello", "a b c", "the the the the"]))
    # no words -> 0.0; all-distinct words -> their count; repeats -> lexicalrichness's partial factor
    assert got.tolist() == [0.0, 0.0, 0.0, 1.0, 3.0, LexicalRichness("the the the the").mtld()]


def test_threshold_is_a_setting_and_checked():
    text = "a b a c a d a e a f a g a h b c b d"
    rec = _records([text])
    assert create("mtld", threshold=0.5).score(rec)[0] == LexicalRichness(text).mtld(threshold=0.5)
    assert create("mtld", threshold=0.5).key() != create("mtld").key()
    with pytest.raises(ValueError, match="'threshold' parameter of mtld"):
        create("mtld", threshold=1.5).score(rec)


def test_mtld_matches_lexicalrichness_on_real_text(shared_data):
    rows = json.loads((shared_data / "pools" / "dolly_3k.json").read_text())[:300]
    outputs = [r["output"] for r in rows]
    got = create("mtld").score(_records(outputs))
    want = [
        LexicalRichness(t).mtld(threshold=0.72) if LexicalRichness(t).words else 0.0
        for t in outputs
    ]
    np.testing.assert_array_equal(got, want)
