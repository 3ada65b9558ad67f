"""One contract test over every registered indicator and each of its backends."""

import inspect

import numpy as np
import pytest

from instructmining.indicators.registry import create, indicator_class, registered
from instructmining.records import make_record

RECORDS = [
    make_record("Explain why the sky is blue.", output="Light scatters more at short wavelengths."),
    make_record("Translate to French", "good morning", output="bonjour"),
    make_record("List three colours.", output="red, green and blue"),
    make_record("Answer yes or no: is water wet?", output="Yes."),
    make_record(
        "Write a haiku about rain.",
        output="Soft rain on the roof\nthe garden drinks slowly\nclouds move to the east",
    ),
    make_record("Say nothing.", output=""),
    make_record("Summarise the text.", "The cat sat on the mat all day.", output="A cat rested."),
    make_record("Count to five.", output="1 2 3 4 5"),
    make_record("Name a river.", output="The Danube."),
    make_record(
        "Describe the old bridge.", output="It is made of stone and crosses the river twice."
    ),
    make_record("Give one word.", output="apple"),
    make_record("Explain why the sky is blue.", output="Light scatters more at short wavelengths."),
]

# per indicator: settings for each backend; a callable gets the pytest request (model fixtures)
CONFIGS = {
    "perplexity": [
        lambda rq: {},
        lambda rq: {"model": str(rq.getfixturevalue("tiny_causal_lm")), "device": "cpu"},
    ],
    "ifd": [lambda rq: {"model": str(rq.getfixturevalue("tiny_causal_lm")), "device": "cpu"}],
    "knn6": [
        lambda rq: {},
        lambda rq: {"k": 2},
        lambda rq: {"model": str(rq.getfixturevalue("tiny_sentence_transformer")), "device": "cpu"},
    ],
    "reward": [lambda rq: {"model": str(rq.getfixturevalue("tiny_reward_model")), "device": "cpu"}],
    **{
        name: [lambda rq: {"model": str(rq.getfixturevalue("tiny_t5")), "device": "cpu"}]
        for name in ("naturalness", "coherence", "understandability")
    },
}


def _cases():
    for name in sorted(registered()):
        for i, _ in enumerate(CONFIGS.get(name, [lambda rq: {}])):
            yield pytest.param(name, i, id=f"{name}-{i}")


@pytest.mark.parametrize(("name", "config"), list(_cases()))
def test_indicator_contract(name, config, request):
    cls = indicator_class(name)
    assert cls.name == name and name.isidentifier()
    assert cls.description and cls.direction, "describe what it measures and its direction"
    assert set(cls.reads) <= {"instruction", "input", "output"}
    sig = inspect.signature(cls.__init__) if cls.__init__ is not object.__init__ else None
    if sig is not None:
        kinds = {p.kind for n, p in sig.parameters.items() if n != "self"}
        assert kinds <= {inspect.Parameter.KEYWORD_ONLY}, "settings are keyword-only"
        # the constructor does no I/O: a missing checkpoint is only noticed when scoring
        if "model" in sig.parameters:
            cls(model="/no/such/checkpoint")

    settings = CONFIGS.get(name, [lambda rq: {}])[config](request)
    ind = create(name, **settings)

    params = ind.params()
    assert {"name", "backend", "version"} <= set(params) and params["name"] == name
    for runtime in ind.runtime_settings:
        assert runtime in ind.settings() and runtime not in params
    rebuilt = create(
        name, **{k: v for k, v in params.items() if k not in ("name", "backend", "version")}
    )
    assert rebuilt.key() == ind.key() and rebuilt.backend == ind.backend

    values = ind.score(RECORDS)
    assert isinstance(values, np.ndarray) and values.dtype == np.float64
    assert values.shape == (len(RECORDS),)
    assert not any(k.endswith("_") for k in ind.settings())
    assert np.isfinite(values[[0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]]).all()
    # deterministic: again, and with a fresh object
    np.testing.assert_array_equal(ind.score(RECORDS), values)
    np.testing.assert_allclose(create(name, **settings).score(RECORDS), values, rtol=1e-6)
    # identical records score identically
    assert values[0] == pytest.approx(values[11], rel=1e-5, nan_ok=True)
    assert ind.score([]).shape == (0,)

    if ind.set_dependent():
        perm = np.random.default_rng(0).permutation(len(RECORDS))
        np.testing.assert_allclose(ind.score([RECORDS[i] for i in perm]), values[perm], rtol=1e-9)
    else:
        parts = np.concatenate([ind.score(RECORDS[:5]), ind.score(RECORDS[5:])])
        np.testing.assert_allclose(parts, values, rtol=1e-5, equal_nan=True)
        if "batch_size" in ind.settings():
            other = create(name, **{**settings, "batch_size": 1})
            assert other.key() == ind.key()
            np.testing.assert_allclose(other.score(RECORDS), values, rtol=1e-5, equal_nan=True)
