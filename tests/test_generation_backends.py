"""LLM backends against a local HTTP server on 127.0.0.1 and a tiny local GPT-2; never the network."""

from __future__ import annotations

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
    with pytest.raises(BackendError, match="fills the model's context"):
        backend.complete(["word " * (context + 5)], SamplingParams(max_tokens=2))


def test_hf_backend_missing_checkpoint_fails_fast(tmp_path: Path) -> None:
    backend = create_backend(f"hf:{tmp_path / 'nope'}", device="cpu")
    with pytest.raises(BackendError, match="no such local checkpoint"):
        backend.complete(["x"], SamplingParams())
