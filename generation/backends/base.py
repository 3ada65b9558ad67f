"""The small interface every LLM backend implements, and `--llm` spec parsing."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from instructmining.errors import InputError, InstructMiningError


class BackendError(InstructMiningError):
    """A backend that could not answer: unreachable server, refused request, retries spent."""


class BackendSettingError(InputError, BackendError):
    """An `--llm` setting that cannot work with the model it names (exit code 2: fix the command)."""


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings for one kind of request (Self-Instruct uses three)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class Completion:
    """One generated text; `finish_reason` is "stop" or "length" (cut at max_tokens)."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Usage:
    """Requests made and tokens spent, summed over a backend's life (thread-safe updates)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, *, requests: int = 0, prompt: int = 0, completion: int = 0, retries: int = 0):
        """Count one request's usage."""
        with self._lock:
            self.requests += requests
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.retries += retries

    def to_dict(self) -> dict[str, int]:
        """Plain numbers for the statistics file."""
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "retries": self.retries,
        }


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop sequence; True when one was found.

    Servers apply stop sequences themselves, but not all of them do it for every
    sequence (chat endpoints cap their number) and a local model does not at all.
    """
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1 and i < cut:
                cut = i
    return text[:cut], cut < len(text)


class LLMBackend(ABC):
    """Turns prompts into completions. Implement `complete`; count usage in `self.usage`."""

    name: str = "llm"

    def __init__(self) -> None:
        self.usage = Usage()

    @abstractmethod
    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order."""

    def describe(self) -> dict[str, Any]:
        """What produced the data, for the run's statistics file."""
        return {"backend": self.name}

    def check(self) -> None:
        """Refuse, before any output is written, a setting that cannot work here (a
        model that does not exist). The default checks nothing: a server is only
        known to answer when it is asked."""
        return None

    def close(self) -> None:
        """Free resources (threads, models); the default has none."""
        return None


LLM_SPEC_HELP = (
    "openai:MODEL (a /completions endpoint), openai-chat:MODEL (/chat/completions) or "
    "hf:NAME_PATH_OR_ID (a local Hugging Face causal LM: a catalogue name, a folder or a hub id)"
)
_KINDS = ("openai", "openai-chat", "hf")


def parse_llm_spec(spec: str) -> tuple[str, str]:
    """Split an `--llm` spec into (kind, model); ValueError naming the accepted forms."""
    kind, sep, model = spec.partition(":")
    if not sep or kind not in _KINDS or not model.strip():
        raise ValueError(f"--llm {spec!r}: expected {LLM_SPEC_HELP}")
    return kind, model.strip()


def create_backend(
    spec: str,
    *,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 60.0,
    max_retries: int = 6,
    backoff: float = 1.0,
    concurrency: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 8,
    template: str = "auto",
) -> LLMBackend:
    """Build the backend an `--llm` spec names (the HTTP options apply to openai*, the rest to hf).

    `template` (hf only): "auto" sends each prompt through the tokenizer's chat template
    when it has one, "chat" insists on it, "plain" sends the bare text.
    """
    kind, model = parse_llm_spec(spec)
    if kind in ("openai", "openai-chat"):
        import os

        from instructmining.generation.backends.openai_http import OpenAIBackend

        url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        return OpenAIBackend(
            model=model,
            base_url=url,
            chat=kind == "openai-chat",
            api_key=os.environ.get(api_key_env),
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            concurrency=concurrency,
        )
    from instructmining.generation.backends.hf_local import HFBackend

    return HFBackend(
        model=model, device=device, dtype=dtype, batch_size=batch_size, template=template
    )
