"""Model schemes: parsing, wrong roles, unknown schemes, entry-point plugins, GGUF loading."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

from instructmining.indicators.registry import create
from instructmining.models import backends
from instructmining.models.backends import Backend, ModelRef, ModelSpecError, parse
from instructmining.models.loading import ModelUnavailableError, clear_model_cache
from instructmining.models.roles import (
    CAUSAL_LM,
    EMBEDDER,
    PAIR_SCORER,
    TOKEN_SCORER,
    YES_NO_SCORER,
    LoadKey,
)


@pytest.mark.parametrize(
    ("spec", "role", "expected"),
    [
        ("hf:smollm2-135m-instruct", TOKEN_SCORER, ModelRef("hf", "smollm2-135m-instruct", True)),
        ("st:all-minilm-l6-v2", EMBEDDER, ModelRef("st", "all-minilm-l6-v2", True)),
        ("gguf:/models/x.gguf", CAUSAL_LM, ModelRef("gguf", "/models/x.gguf", True)),
        ("HF:org/name", PAIR_SCORER, ModelRef("hf", "org/name", True)),
        ("tfidf-svd", EMBEDDER, ModelRef("tfidf-svd", "", True)),
        ("ngram", TOKEN_SCORER, ModelRef("ngram", "", True)),
        # bare names keep today's meaning: catalogue name, path or hub id
        ("all-minilm-l6-v2", EMBEDDER, ModelRef("st", "all-minilm-l6-v2", False)),
        (
            "MingZhong/unieval-dialog",
            YES_NO_SCORER,
            ModelRef("hf", "MingZhong/unieval-dialog", False),
        ),
        ("/no/such/ckpt", TOKEN_SCORER, ModelRef("hf", "/no/such/ckpt", False)),
        ("./rel:dir", TOKEN_SCORER, ModelRef("hf", "./rel:dir", False)),
    ],
)
def test_parse_good_specs(spec, role, expected):
    ref = parse(spec, role, indicator="x")
    assert ref == expected
    assert str(ref) == spec.replace("HF:", "hf:")  # the string it stands for


def test_an_existing_path_with_a_colon_is_a_path(tmp_path, monkeypatch):
    folder = tmp_path / "st:model"
    folder.mkdir()
    assert parse(str(folder), EMBEDDER, indicator="knn6") == ModelRef("st", str(folder), False)
    (tmp_path / "hf:x").mkdir()
    monkeypatch.chdir(tmp_path)  # relative and existing: a path, not scheme "hf"
    assert parse("hf:x", TOKEN_SCORER, indicator="x") == ModelRef("hf", "hf:x", False)


@pytest.mark.parametrize(
    ("indicator", "spec", "words"),
    [
        ("perplexity", "st:all-minilm-l6-v2", "st: does not give a token scorer; it takes hf:"),
        ("knn6", "hf:some/model", "hf: does not give an embedder; it takes st:NAME_OR_PATH"),
        ("reward", "gguf:/m.gguf", "gguf: does not give a pair scorer"),
        ("naturalness", "st:x", "st: does not give a yes/no scorer"),
        ("reward", "ngram", "ngram does not give a pair scorer"),
        ("knn6", "ngram", "ngram does not give an embedder; it takes st:NAME_OR_PATH, tfidf-svd"),
        ("perplexity", "tfidf-svd", "tfidf-svd does not give a token scorer"),
        ("ifd", "ngram", "is not a causal LM"),
    ],
)
def test_a_scheme_of_the_wrong_role_is_one_line_naming_the_setting(indicator, spec, words):
    with pytest.raises(ModelSpecError) as err:
        create(indicator, model=spec)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{indicator}: model {spec!r}")
    assert words in text


def test_wrong_role_lists_what_the_role_takes():
    with pytest.raises(ModelSpecError) as err:
        parse("st:m", TOKEN_SCORER, indicator="perplexity")
    assert str(err.value) == (
        "perplexity: model 'st:m': st: does not give a token scorer; it takes "
        "hf:NAME_OR_PATH, gguf:PATH, ngram or a bare NAME_OR_PATH (= hf:)"
    )


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(ModelSpecError) as err:
        create("knn6", model="onnx:models/minilm")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("knn6: model 'onnx:models/minilm': unknown scheme onnx:;")
    assert "known schemes: hf:, st:, gguf:, tfidf-svd, ngram" in text
    assert "instructmining.backends" in text


def test_empty_target_says_how_to_write_it():
    with pytest.raises(ModelSpecError, match=r"nothing follows gguf:; write gguf:PATH"):
        parse("gguf:", TOKEN_SCORER, indicator="perplexity")


def test_a_stored_rule_with_a_wrong_scheme_is_refused_in_one_line():
    from instructmining.indicators.spec import IndicatorSettingsError, build

    with pytest.raises(IndicatorSettingsError) as err:
        build({"name": "knn6", "model": "hf:x"}, source="rule.json")
    assert str(err.value).startswith("rule.json: indicator 'knn6': knn6: model 'hf:x'")


def test_backends_of_explicit_schemes_keep_the_names_of_bare_ones(tmp_path):
    assert create("knn6", model="st:m").backend == create("knn6", model="m").backend
    assert create("perplexity", model="hf:m").backend == "causal-lm"
    assert create("perplexity", model="gguf:/m.gguf").backend == "causal-lm"
    assert create("reward", model="hf:m").backend == "transformers"
    assert create("coherence", model="hf:m").backend == "unieval"
    assert create("knn6").backend == "tfidf-svd" and create("perplexity").backend == "ngram"


def test_missing_gguf_file_fails_fast_in_one_line(tmp_path):
    missing = tmp_path / "absent.gguf"
    with pytest.raises(ModelUnavailableError) as err:
        backends.check(TOKEN_SCORER, f"gguf:{missing}", indicator="perplexity")
    assert str(err.value) == (
        f"perplexity: GGUF file {str(missing)!r} does not exist; write gguf:PATH with the "
        "path of a .gguf file"
    )


def test_profiles_check_models_through_their_scheme(tmp_path):
    from instructmining.indicators.profiles import build

    with pytest.raises(ModelUnavailableError, match="GGUF file"):
        build("lite", names=["perplexity"], models={"perplexity": f"gguf:{tmp_path / 'x.gguf'}"})
    plan = build("lite", names=["knn6"], models={"knn6": "tfidf-svd"})
    assert plan.indicators[0].backend == "tfidf-svd"


def test_gguf_loads_through_transformers_gguf_file(tmp_path, monkeypatch):
    """The file's folder and name go to from_pretrained(gguf_file=...), as the catalogue does."""
    transformers = pytest.importorskip("transformers")
    from instructmining.models.roles import CausalLM

    path = tmp_path / "tiny.Q4.gguf"
    path.write_bytes(b"GGUF")
    seen = []

    class FakeLM:
        def to(self, device):
            return self

        def eval(self):
            return self

    def fake(kind):
        def load(folder, **kwargs):
            seen.append((kind, folder, kwargs.get("gguf_file"), kwargs.get("trust_remote_code")))
            return FakeLM() if kind == "model" else object()

        return load

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tokenizer"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake("model"))
    clear_model_cache()
    lm = backends.load(CAUSAL_LM, f"gguf:{path}", indicator="t", device="cpu", dtype="fp32")
    assert isinstance(lm, CausalLM) and lm.key.scheme == "gguf" and lm.key.source == str(path)
    assert seen == [
        ("tokenizer", str(tmp_path), path.name, False),
        ("model", str(tmp_path), path.name, False),
    ]
    clear_model_cache()


# --- plugins ---------------------------------------------------------------------------------


class ConstantEmbedder:
    """A plugin's embedder: every text maps to the same unit vector."""

    def __init__(self, key: LoadKey) -> None:
        self.key = key

    def embed(self, texts, *, batch_size=64, max_length=None, progress=None):
        out = np.zeros((len(texts), 3), dtype=np.float32)
        out[:, 0] = 1.0
        return out

    def truncated(self, texts, *, max_length=None):
        return np.zeros(len(texts), dtype=bool)


LOADS: list[str] = []


def _constant(request):
    LOADS.append(request.source)
    return ConstantEmbedder(request.key)


PLUGIN = Backend("const", {EMBEDDER: _constant}, description="test plugin")
NOT_A_ROLE = Backend("broken", {EMBEDDER: lambda request: object()})


@pytest.fixture
def plugins(monkeypatch):
    """Fake entry points of the instructmining.backends group, loaded afresh."""

    def install(**objects):
        eps = [
            importlib.metadata.EntryPoint(name, f"{__name__}:{attr}", backends.ENTRY_POINT_GROUP)
            for name, attr in objects.items()
        ]
        real = importlib.metadata.entry_points

        def entry_points(**kwargs):
            if kwargs.get("group") == backends.ENTRY_POINT_GROUP:
                return importlib.metadata.EntryPoints(eps)
            return real(**kwargs)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        monkeypatch.setattr(backends, "_PLUGINS", {})
        monkeypatch.setattr(backends, "_plugins_loaded", False)

    yield install
    clear_model_cache()


def test_an_entry_point_registers_a_scheme(plugins):
    plugins(const="PLUGIN")
    assert "const:" in backends.known_schemes()
    LOADS.clear()
    clear_model_cache()
    knn = create("knn6", model="const:anything", device="cpu", k=1)
    assert knn.backend == "const"
    values = knn.score([_record(i) for i in range(3)])
    np.testing.assert_array_equal(values, np.zeros(3))  # all at one point
    create("knn6", model="const:anything", device="cpu", k=2).score([_record(0), _record(1)])
    assert LOADS == ["anything"]  # loaded once for both indicators
    with pytest.raises(ModelSpecError, match="const: does not give a token scorer"):
        create("perplexity", model="const:anything")


def test_a_plugin_giving_the_wrong_type_is_one_line(plugins):
    from instructmining.errors import InstructMiningError

    plugins(broken="NOT_A_ROLE")
    with pytest.raises(InstructMiningError) as err:
        create("knn6", model="broken:x", device="cpu").score([_record(0), _record(1)])
    assert str(err.value) == (
        "knn6: the broken: backend returned 'object', not an embedder (Embedder); fix its factory"
    )


def test_an_entry_point_that_is_not_a_backend_is_refused(plugins):
    plugins(other="PLUGIN")  # its scheme is "const", not "other"
    with pytest.raises(
        TypeError, match=r"must be a models\.backends\.Backend whose scheme is 'other'"
    ):
        parse("other:x", EMBEDDER, indicator="knn6")


def test_a_plugin_cannot_take_a_built_in_scheme():
    with pytest.raises(ValueError, match="already registered"):
        backends.register(Backend("hf", {EMBEDDER: _constant}))
    with pytest.raises(ValueError, match="reserved"):
        backends.register(Backend("ngram", {EMBEDDER: _constant}))


def test_built_in_schemes_never_scan_entry_points(monkeypatch):
    monkeypatch.setattr(backends, "_plugins_loaded", False)
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **kw: pytest.fail("entry points scanned")
    )
    parse("hf:x", TOKEN_SCORER, indicator="perplexity")
    parse("plain-name", EMBEDDER, indicator="knn6")


def _record(i: int):
    from instructmining.records import make_record

    return make_record(f"Describe item {i}", output=f"item {i} is here")
