"""Test doubles for the generator: a scripted LLM (in process) and a local OpenAI-style HTTP server.

The scripted LLM answers each of the generator's three prompts deterministically from
a hash of the prompt, with made-up words, so runs are reproducible and a resumed run
can be compared with an uninterrupted one. Nothing here reaches the network.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from instructmining.generation.backends.base import (
    Completion,
    LLMBackend,
    SamplingParams,
    apply_stop,
)

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _words(rng: random.Random, k: int) -> list[str]:
    return ["".join(rng.sample(_SYLLABLES, 2)) for _ in range(k)]


def _rng(prompt: str) -> random.Random:
    return random.Random(hashlib.sha256(prompt.encode("utf-8")).hexdigest())


def scripted_reply(prompt: str) -> str:
    """What the scripted model says to one of the generator's prompts."""
    rng = _rng(prompt)
    if "Classification:" in prompt.rsplit("Task:", 1)[-1]:
        task = prompt.rsplit("Task:", 1)[-1]
        return " Yes" if "label" in task.lower() else " No"
    last = re.search(r"\n(\d+)\.$", prompt)
    if last:
        # continue the numbered list from the number the prompt ends with
        start = int(last.group(1))
        items = []
        for i in range(6):
            kind = rng.random()
            if kind < 0.1:
                text = "Draw an image of " + " ".join(_words(rng, 4))
            elif kind < 0.2:
                text = "Too short"
            elif kind < 0.3:
                text = "Label each " + " ".join(_words(rng, 6)) + " as good or bad"
            elif kind < 0.4:
                # an in-context instruction, slightly changed: the ROUGE-L filter's case
                shown = re.findall(r"^\d+\. (.*)$", prompt, flags=re.M)
                text = rng.choice(shown) + " " + _words(rng, 1)[0]
            elif kind < 0.45:
                text = rng.choice(re.findall(r"^\d+\. (.*)$", prompt, flags=re.M))
            else:
                text = rng.choice(["Describe", "Explain", "Summarize", "Rewrite"]) + " "
                text += " ".join(_words(rng, rng.randint(5, 9)))
            items.append(f"{start + i}. {text}" if i else f" {text}")
        return "\n".join(items) + "\n\n"
    task = prompt.rsplit("Task:", 1)[-1]
    if "Class label" in prompt and "Class label" not in task:
        return "".join(
            f"Class label: {label}\nInput: {' '.join(_words(rng, 5))}\n"
            for label in ("Good", "Bad")
        )
    n = rng.randint(1, 3)
    return "".join(
        f"Example {i + 1}\nInput: {' '.join(_words(rng, 4))}\nOutput: {' '.join(_words(rng, 6))}\n"
        for i in range(n)
    )


class ScriptedKill(RuntimeError):
    """Raised by ScriptedBackend to stand for a run killed mid-way."""


class ScriptedBackend(LLMBackend):
    """The scripted model in process; raises after `fail_after` completions to simulate a kill."""

    name = "scripted"

    def __init__(self, *, fail_after: int | None = None) -> None:
        super().__init__()
        self.fail_after = fail_after
        self.calls = 0

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        out = []
        for p in prompts:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise ScriptedKill(f"killed after {self.calls} completions")
            self.calls += 1
            text, _ = apply_stop(scripted_reply(p), params.stop)
            self.usage.add(requests=1, prompt=len(p.split()), completion=len(text.split()))
            out.append(Completion(text, "stop", len(p.split()), len(text.split())))
        return out


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 answering with `scripted_reply`.

    `failures` is a list of HTTP status codes answered (in order) before real answers;
    `requests` records every JSON body received.
    """

    def __init__(self, *, failures: Sequence[int] = (), reply: Any = scripted_reply) -> None:
        self.failures = list(failures)
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                    )
                    status = outer.failures.pop(0) if outer.failures else 200
                if status != 200:
                    self._send(status, {"error": {"message": f"scripted {status}"}})
                    return
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                text, _ = apply_stop(outer.reply(prompt), body.get("stop") or [])
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                usage = {
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(text.split()),
                }
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                self._send(200, {"choices": [choice], "usage": usage})

            def _send(self, status: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The /v1 root to give the backend."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
