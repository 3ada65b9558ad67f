"""Model-backed indicators (reward, UniEval) on tiny random-weight checkpoints.

Every value is checked against an independent computation written here with
plain transformers calls, one record at a time and without padding.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from instructmining.errors import InstructMiningError
from instructmining.indicators.registry import create, indicator_class
from instructmining.models.loading import ModelUnavailableError, clear_model_cache
from instructmining.models.reward import encode_pair
from instructmining.records import Record, make_record

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

UNIEVAL = ("naturalness", "coherence", "understandability")
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|endoftext|>{% endfor %}"
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads spin-wait on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def records() -> list[Record]:
    """Records of varied lengths, one with an input, one with an empty output."""
    return [
        make_record("Explain why the sky is blue.", "", "Because of Rayleigh scattering."),
        make_record("Write a list of three colours.", "", "Red, green and blue."),
        make_record("Translate into French:", "good morning", "bonjour"),
        make_record("Describe the old bridge.", "", "The old bridge crosses a river. " * 3),
        make_record("Answer yes or no.", "Is this a poem?", ""),
        make_record("Summarise the data.", "two apples and a poem", "A short story."),
    ]


@pytest.fixture(scope="module")
def long_records() -> list[Record]:
    """One short record, one with a long prompt, one with a long response, one with both."""
    return [
        make_record("Say hi.", "", "hi"),
        make_record("Describe the data.", "my teacher explains the summary " * 20, "Done."),
        make_record("Write a poem.", "", "the cat watches two apples " * 20),
        make_record("Explain.", "our team builds the data " * 20, "a river crosses the " * 20),
    ]


@pytest.fixture(scope="module")
def oasst_layout_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_oasst_reward_model

    return build_oasst_reward_model(tmp_path_factory.mktemp("models") / "oasst-layout")


@pytest.fixture(scope="module")
def pair_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_reward_model

    return build_reward_model(tmp_path_factory.mktemp("models") / "pair-rm", oasst_tokens=False)


@pytest.fixture(scope="module")
def encoder_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_encoder_reward_model

    return build_encoder_reward_model(tmp_path_factory.mktemp("models") / "bert-rm")


@pytest.fixture(scope="module")
def chat_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_reward_model

    return build_reward_model(
        tmp_path_factory.mktemp("models") / "chat-rm",
        oasst_tokens=False,
        chat_template=CHAT_TEMPLATE,
    )


def prompt_of(r: Record) -> str:
    return f"{r.instruction}\n\n{r.input}" if r.input else r.instruction


# --- independent computations ------------------------------------------------------------


def plain_seqcls_rewards(path: Path, texts_or_pairs: list) -> np.ndarray:
    """One-output sequence classifier on each input alone (no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    values = []
    with torch.no_grad():
        for item in texts_or_pairs:
            if isinstance(item, list):  # token ids
                enc = {"input_ids": torch.tensor([item])}
            elif isinstance(item, tuple):
                enc = tok(*item, return_tensors="pt")
            else:
                enc = tok(item, return_tensors="pt", add_special_tokens=False)
            values.append(model(**enc).logits[0, 0].item())
    return np.array(values)


def oasst_text(r: Record) -> str:
    return f"<|prompter|>{prompt_of(r)}<|endoftext|><|assistant|>{r.output}<|endoftext|>"


def plain_oasst_layout_rewards(path: Path, texts: list[str]) -> np.ndarray:
    """GPT-NeoX trunk + `out_proj` read straight from the safetensors file, last token pooled."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GPTNeoXModel

    tok = AutoTokenizer.from_pretrained(str(path))
    trunk = GPTNeoXModel.from_pretrained(str(path)).eval()
    weights = load_file(str(path / "model.safetensors"))
    w, b = weights["out_proj.weight"], weights["out_proj.bias"]
    values = []
    with torch.no_grad():
        for text in texts:
            hidden = trunk(**tok(text, return_tensors="pt")).last_hidden_state[0, -1]
            values.append((hidden @ w[0] + b[0]).item())
    return np.array(values)


def plain_unieval(path: Path, texts: list[str], max_length: int = 1024) -> np.ndarray:
    """UniEval's own recipe: softmax over the vocabulary at the first decoder step."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(path)).eval()
    yes, no = tok("Yes").input_ids[0], tok("No").input_ids[0]
    values = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=max_length)
            labels = torch.tensor([[no]])  # any one-token target: only step 0 is read
            probs = torch.softmax(model(**enc, labels=labels).logits[0, 0], dim=-1)
            values.append((probs[yes] / (probs[yes] + probs[no])).item())
    return np.array(values)


def unieval_text(dimension: str, r: Record) -> str:
    question = {
        "naturalness": "Is this a natural response in the dialogue?",
        "coherence": "Is this a coherent response given the dialogue history?",
        "understandability": "Is this an understandable response in the dialogue?",
    }[dimension]
    text = f"question: {question} </s> response: {r.output}"
    if dimension == "coherence":
        history = " \n ".join(t for t in (r.instruction, r.input) if t) + " \n\n"
        text += f" </s> dialogue history: {history}"
    return text


# --- reward ------------------------------------------------------------------------------


def test_reward_oasst_format_matches_plain_transformers(tiny_reward_model, records):
    ind = create("reward", model=str(tiny_reward_model), device="cpu", batch_size=4)
    values = ind.score(records)
    assert ind.template_ == "oasst"
    assert values.dtype == np.float64 and values.shape == (len(records),)
    expected = plain_seqcls_rewards(tiny_reward_model, [oasst_text(r) for r in records])
    np.testing.assert_allclose(values, expected, atol=1e-5, rtol=1e-5)
    assert ind.truncated_ == 0 and not ind.truncated_mask_.any()


def test_reward_loads_openassistant_layout(oasst_layout_rm, records):
    ind = create("reward", model=str(oasst_layout_rm), device="cpu", batch_size=3)
    values = ind.score(records)
    assert ind.template_ == "oasst"
    expected = plain_oasst_layout_rewards(oasst_layout_rm, [oasst_text(r) for r in records])
    np.testing.assert_allclose(values, expected, atol=1e-5, rtol=1e-5)


def test_reward_pair_template_when_no_oasst_tokens(pair_rm, records):
    ind = create("reward", model=str(pair_rm), device="cpu", batch_size=4)
    values = ind.score(records)
    assert ind.template_ == "pair"
    expected = plain_seqcls_rewards(pair_rm, [(prompt_of(r), r.output) for r in records])
    np.testing.assert_allclose(values, expected, atol=1e-5, rtol=1e-5)


def test_reward_encoder_pair_keeps_segment_ids(encoder_rm, records, long_records):
    ind = create("reward", model=str(encoder_rm), device="cpu", batch_size=4)
    values = ind.score(records)
    assert ind.template_ == "pair"
    expected = plain_seqcls_rewards(encoder_rm, [(prompt_of(r), r.output) for r in records])
    np.testing.assert_allclose(values, expected, atol=1e-5, rtol=1e-5)
    # truncated pairs: the values are the model's on the cut texts' features
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(encoder_rm))
    ind = create("reward", model=str(encoder_rm), device="cpu", batch_size=4, max_length=32)
    values = ind.score(long_records)
    assert ind.truncated_ == 3
    features = [encode_pair(tok, "pair", r.prompt, r.output, 32)[0] for r in long_records]
    assert all(len(f["input_ids"]) <= 32 and "token_type_ids" in f for f in features)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(encoder_rm)).eval()
    with torch.no_grad():
        plain = [
            model(**{k: torch.tensor([v]) for k, v in f.items()}).logits[0, 0].item()
            for f in features
        ]
    np.testing.assert_allclose(values, plain, atol=1e-5, rtol=1e-5)


def test_reward_chat_template_when_the_tokenizer_has_one(chat_rm, records):
    ind = create("reward", model=str(chat_rm), device="cpu", batch_size=4)
    values = ind.score(records)
    assert ind.template_ == "chat"
    texts = [
        f"[user] {prompt_of(r)}<|endoftext|>[assistant] {r.output}<|endoftext|>" for r in records
    ]
    np.testing.assert_allclose(values, plain_seqcls_rewards(chat_rm, texts), atol=1e-5, rtol=1e-5)


def test_reward_explicit_template_overrides_auto(tiny_reward_model, records):
    ind = create("reward", model=str(tiny_reward_model), device="cpu", template="pair")
    values = ind.score(records)
    expected = plain_seqcls_rewards(tiny_reward_model, [(prompt_of(r), r.output) for r in records])
    np.testing.assert_allclose(values, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_reward_model", "oasst_layout_rm"])
def test_reward_batch_size_invariant_and_deterministic(fixture, request, records):
    path = str(request.getfixturevalue(fixture))
    one = create("reward", model=path, device="cpu", batch_size=1).score(records)
    many = create("reward", model=path, device="cpu", batch_size=5).score(records)
    np.testing.assert_allclose(one, many, atol=1e-5, rtol=1e-5)
    again = create("reward", model=path, device="cpu", batch_size=1).score(records)
    assert np.array_equal(one, again)
    clear_model_cache()  # a fresh load gives the same values
    np.testing.assert_array_equal(
        create("reward", model=path, device="cpu", batch_size=1).score(records), one
    )


def test_reward_truncation_keeps_the_response_and_the_end_of_the_prompt(
    tiny_reward_model, long_records
):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_reward_model))
    limit = 48
    ind = create("reward", model=str(tiny_reward_model), device="cpu", max_length=limit)
    values = ind.score(long_records)
    assert ind.truncated_ == 3
    assert ind.truncated_mask_.tolist() == [False, True, True, True]

    prompter, assistant = tok.convert_tokens_to_ids(["<|prompter|>", "<|assistant|>"])
    eos = tok.eos_token_id
    encoded = [
        encode_pair(tok, "oasst", r.prompt, r.output, limit)[0]["input_ids"] for r in long_records
    ]
    assert all(len(ids) <= limit for ids in encoded)
    budget = limit - 4  # <|prompter|> <|endoftext|> <|assistant|> ... <|endoftext|>

    def parts(ids):
        assert ids[0] == prompter and ids[-1] == eos
        middle = ids.index(assistant)
        assert ids[middle - 1] == eos
        return ids[1 : middle - 1], ids[middle + 1 : -1]

    def tokens(text):
        return tok(text, add_special_tokens=False).input_ids

    # long prompt: its start is cut, its end and the whole response stay
    prompt, response = parts(encoded[1])
    assert response == tokens(long_records[1].output)
    assert prompt == tokens(prompt_of(long_records[1]))[-len(prompt) :]
    assert len(prompt) + len(response) >= budget - 1  # up to a token of re-tokenising slack
    # long response, short prompt: the prompt stays whole, the response end is cut
    prompt, response = parts(encoded[2])
    assert prompt == tokens(prompt_of(long_records[2]))
    full = tokens(long_records[2].output)
    assert 0 < len(response) < len(full) and response == full[: len(response)]
    # both long: the end of the prompt keeps half the room
    prompt, response = parts(encoded[3])
    assert abs(len(prompt) - budget // 2) <= 1
    assert prompt == tokens(prompt_of(long_records[3]))[-len(prompt) :]
    assert response == tokens(long_records[3].output)[: len(response)]
    # and the values are the model's on exactly those tokens
    expected = plain_seqcls_rewards(tiny_reward_model, encoded)
    np.testing.assert_allclose(values, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_keep_tokens_cut_on_token_boundaries(tiny_reward_model, fast):
    from transformers import AutoTokenizer

    from instructmining.models.reward import keep_first_tokens, keep_last_tokens

    tok = AutoTokenizer.from_pretrained(str(tiny_reward_model))

    class Slow:  # the same tokenizer without offsets, as a slow tokenizer is
        is_fast = False

        def __call__(self, *args, **kwargs):
            return tok(*args, **kwargs)

        def decode(self, ids):
            return tok.decode(ids)

    use = tok if fast else Slow()
    text = "Our team builds the data; the cat watches two apples."
    ids = tok(text, add_special_tokens=False).input_ids
    for k in (0, 1, 5, len(ids) - 1, len(ids), len(ids) + 3):
        tail = tok(keep_last_tokens(use, text, k), add_special_tokens=False).input_ids
        head = tok(keep_first_tokens(use, text, k), add_special_tokens=False).input_ids
        assert tail == (ids[-k:] if k else [])
        assert head == ids[:k]


@given(prompt=st.integers(0, 500), response=st.integers(0, 500), budget=st.integers(1, 300))
def test_split_budget_fits_and_favours_the_response(prompt, response, budget):
    from instructmining.models.reward import split_budget

    keep_prompt, keep_response = split_budget(prompt, response, budget)
    assert 0 <= keep_prompt <= prompt and 0 <= keep_response <= response
    if prompt + response <= budget:
        assert (keep_prompt, keep_response) == (prompt, response)
    else:
        assert keep_prompt + keep_response == budget
        assert keep_prompt >= min(prompt, budget // 2)
        assert keep_response == response or keep_prompt == min(prompt, budget // 2)


def test_reward_max_length_capped_at_model_positions(tiny_reward_model, long_records):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_reward_model))
    ind = create("reward", model=str(tiny_reward_model), device="cpu", max_length=4096)
    values = ind.score(long_records)  # the tiny model has 128 positions
    assert np.isfinite(values).all()
    over = [len(tok(oasst_text(r)).input_ids) > 128 for r in long_records]
    assert any(over) and ind.truncated_mask_.tolist() == over


def test_reward_empty_input_loads_nothing():
    ind = create("reward", model="/nonexistent/checkpoint")
    values = ind.score([])
    assert values.shape == (0,) and values.dtype == np.float64
    assert ind.truncated_ == 0


def test_reward_rejects_a_classifier_with_several_outputs(tmp_path, records):
    from tiny_models import build_reward_model

    path = build_reward_model(tmp_path / "two-labels", num_labels=2)
    with pytest.raises(InstructMiningError, match="num_labels=1"):
        create("reward", model=str(path), device="cpu").score(records)


def test_reward_bad_settings_are_value_errors(tiny_reward_model, records):
    with pytest.raises(ValueError, match="'template'"):
        create("reward", model=str(tiny_reward_model), template="llama").score(records)
    with pytest.raises(ValueError, match="'batch_size'"):
        create("reward", model=str(tiny_reward_model), batch_size=0).score(records)


# --- UniEval -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNIEVAL)
def test_unieval_matches_plain_transformers(name, tiny_t5, records):
    ind = create(name, model=str(tiny_t5), device="cpu", batch_size=4)
    values = ind.score(records)
    assert values.dtype == np.float64 and values.shape == (len(records),)
    assert ((values > 0) & (values < 1)).all()
    expected = plain_unieval(tiny_t5, [unieval_text(name, r) for r in records])
    np.testing.assert_allclose(values, expected, atol=1e-6, rtol=1e-5)
    assert ind.truncated_ == 0


@pytest.mark.parametrize("name", UNIEVAL)
def test_unieval_batch_size_invariant_and_deterministic(name, tiny_t5, records):
    one = create(name, model=str(tiny_t5), device="cpu", batch_size=1).score(records)
    many = create(name, model=str(tiny_t5), device="cpu", batch_size=6).score(records)
    np.testing.assert_allclose(one, many, atol=1e-6)
    assert np.array_equal(one, create(name, model=str(tiny_t5), batch_size=1).score(records))


@pytest.mark.parametrize("name", UNIEVAL)
def test_unieval_truncation_counted_and_matches_uniEval_cut(name, tiny_t5, long_records):
    ind = create(name, model=str(tiny_t5), device="cpu", max_length=40)
    values = ind.score(long_records)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_t5))
    texts = [unieval_text(name, r) for r in long_records]
    too_long = [len(tok(t).input_ids) > 40 for t in texts]
    assert ind.truncated_mask_.tolist() == too_long and ind.truncated_ == sum(too_long) > 0
    np.testing.assert_allclose(values, plain_unieval(tiny_t5, texts, 40), atol=1e-6, rtol=1e-5)


def test_unieval_coherence_reads_the_prompt_the_others_do_not(tiny_t5):
    a = make_record("Explain why the sky is blue.", "", "Because of scattering.")
    b = make_record("Write a poem about the river.", "in two lines", "Because of scattering.")
    for name in UNIEVAL:
        va, vb = create(name, model=str(tiny_t5), device="cpu").score([a, b])
        if name == "coherence":
            assert va != vb
        else:
            assert va == vb


def test_unieval_three_indicators_share_one_loaded_model(tiny_t5, records, monkeypatch):
    from transformers import AutoModelForSeq2SeqLM

    clear_model_cache()
    calls = []
    original = AutoModelForSeq2SeqLM.from_pretrained

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForSeq2SeqLM, "from_pretrained", counting)
    for name in UNIEVAL:
        create(name, model=str(tiny_t5), device="cpu").score(records)
    assert len(calls) == 1


def test_unieval_empty_input():
    for name in UNIEVAL:
        ind = create(name, model="/nonexistent/unieval")
        assert ind.score([]).shape == (0,) and ind.truncated_ == 0


# --- shared behaviour --------------------------------------------------------------------


@pytest.mark.parametrize("name", ("reward", *UNIEVAL))
def test_runtime_settings_stay_out_of_params(name):
    a = create(name, model="m", device="cpu", batch_size=2)
    b = create(name, model="m", device="auto", batch_size=64)
    assert a.params() == b.params() and a.key() == b.key()
    assert "device" not in a.params() and "batch_size" not in a.params()
    p = a.params()
    rebuilt = create(
        p["name"], **{k: v for k, v in p.items() if k not in ("name", "backend", "version")}
    )
    assert rebuilt.params() == p
    assert create(name, model="m", max_length=64).key() != a.key()
    cls = indicator_class(name)
    assert cls.needs_model and cls.direction.startswith("higher")


@pytest.mark.parametrize(
    ("name", "option"), [("reward", "reward"), *((n, "unieval") for n in UNIEVAL)]
)
def test_missing_local_path_fails_fast_naming_the_fix(name, option, tmp_path, records):
    missing = str(tmp_path / "no-such-checkpoint")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        create(name, model=missing, device="cpu").score(records)
    assert time.perf_counter() - start < 1.0
    assert missing in str(err.value) and f"--model {option}=" in str(err.value)


@pytest.mark.parametrize(
    ("name", "option"), [("reward", "reward"), *((n, "unieval") for n in UNIEVAL)]
)
def test_uncached_hub_id_offline_fails_fast(name, option, monkeypatch, records):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "instructmining-tests/no-such-checkpoint"  # in no cache anywhere
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        create(name, model=hub_id, device="cpu").score(records)
    assert time.perf_counter() - start < 1.0
    assert hub_id in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    assert f"--model {option}=" in str(err.value)


@pytest.mark.parametrize("name", ("reward", *UNIEVAL))
def test_default_checkpoint_is_the_papers(name):
    expected = {"reward": "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"}.get(
        name, "MingZhong/unieval-dialog"
    )
    assert indicator_class(name)().model == expected


def test_non_finite_model_outputs_raise(tmp_path, records):
    from tiny_models import build_reward_model, build_t5
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    rm_path = build_reward_model(tmp_path / "nan-rm")
    rm = AutoModelForSequenceClassification.from_pretrained(str(rm_path))
    with torch.no_grad():
        rm.score.weight.fill_(float("nan"))
    rm.save_pretrained(str(rm_path))
    with pytest.raises(InstructMiningError, match="non-finite"):
        create("reward", model=str(rm_path), device="cpu").score(records)

    t5_path = build_t5(tmp_path / "nan-t5")
    t5 = AutoModelForSeq2SeqLM.from_pretrained(str(t5_path))
    with torch.no_grad():
        t5.lm_head.weight.fill_(float("inf"))
    t5.save_pretrained(str(t5_path))
    with pytest.raises(InstructMiningError, match="non-finite"):
        create("naturalness", model=str(t5_path), device="cpu").score(records)


def test_reward_truncation_ends_on_real_text_that_does_not_survive_decoding(
    tiny_reward_model, shared_data
):
    # dolly_3k row 1439 (IPA characters) once sent the re-truncation loop round forever:
    # its text decodes to something that re-encodes longer with the tiny tokenizer.
    import signal

    from instructmining.readers import read_records

    record = read_records(shared_data / "pools/dolly_3k.json").records[1439]
    ind = create("reward", model=str(tiny_reward_model), device="cpu")

    def too_slow(*_):
        raise TimeoutError("reward truncation did not finish")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(60)
    try:
        value = ind.score([record])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert np.isfinite(value).all()
