"""An OpenAI-compatible HTTP client (OpenAI, vLLM, TGI, llama.cpp server, Ollama).

Standard library only: urllib for requests, a thread pool for bounded concurrency.
Retries with exponential backoff on 429, 5xx, timeouts and dropped connections;
other 4xx answers fail at once with the server's message.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from instructmining.generation.backends.base import (
    BackendError,
    Completion,
    LLMBackend,
    SamplingParams,
    apply_stop,
)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# chat endpoints (OpenAI's among them) accept at most four stop sequences; the rest
# are applied to the returned text
_MAX_STOP = 4


class OpenAIBackend(LLMBackend):
    """Completions (`chat=False`) or chat completions from an OpenAI-compatible server."""

    name = "openai"

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        chat: bool = False,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 6,
        concurrency: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        super().__init__()
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.chat = chat
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff = backoff
        self.max_backoff = max_backoff

    @property
    def url(self) -> str:
        """The endpoint requests go to."""
        return self.base_url + ("/chat/completions" if self.chat else "/completions")

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "openai-chat" if self.chat else "openai",
            "model": self.model,
            "url": self.url,
        }

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        if len(prompts) <= 1 or self.concurrency == 1:
            return [self._one(p, params) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(lambda p: self._one(p, params), prompts))

    def _payload(self, prompt: str, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": 1,
        }
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if params.stop:
            body["stop"] = list(params.stop[:_MAX_STOP])
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def _one(self, prompt: str, params: SamplingParams) -> Completion:
        data = self._post(self._payload(prompt, params))
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
            finish = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError(
                f"{self.url}: unexpected response (no choices[0].{'message.content' if self.chat else 'text'}): "
                f"{json.dumps(data)[:200]}"
            ) from exc
        text = text or ""
        text, stopped = apply_stop(text, params.stop)
        if stopped:
            finish = "stop"
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        self.usage.add(prompt=prompt_tokens, completion=completion_tokens)
        return Completion(
            text, "length" if finish == "length" else "stop", prompt_tokens, completion_tokens
        )

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            request = urllib.request.Request(self.url, data=raw, headers=headers, method="POST")
            self.usage.add(requests=1)
            retry_after: float | None = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    payload = resp.read()
                try:
                    return json.loads(payload)
                except json.JSONDecodeError as exc:
                    raise BackendError(
                        f"{self.url}: the answer is not JSON: {payload[:200]!r}"
                    ) from exc
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                if exc.code not in RETRY_STATUS:
                    raise BackendError(f"{self.url}: HTTP {exc.code}: {detail}") from None
                problem = f"HTTP {exc.code}: {detail}"
                retry_after = _retry_after(exc.headers.get("Retry-After"))
            except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                problem = f"{type(exc).__name__}: {reason}"
            if attempt >= self.max_retries:
                raise BackendError(
                    f"{self.url}: gave up after {attempt + 1} attempts; last: {problem}"
                )
            delay = min(self.max_backoff, self.backoff * 2**attempt)
            delay *= 0.5 + random.random() / 2  # jitter keeps parallel clients apart
            if retry_after is not None:
                delay = min(self.max_backoff, max(delay, retry_after))
            self.usage.add(retries=1)
            time.sleep(delay)
            attempt += 1


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
