"""LLM backends for the generator: an OpenAI-compatible HTTP client and a local Hugging Face model."""

from instructmining.generation.backends.base import (
    BackendError,
    BackendSettingError,
    Completion,
    LLMBackend,
    SamplingParams,
    Usage,
    apply_stop,
    create_backend,
    parse_llm_spec,
)

__all__ = [
    "BackendError",
    "BackendSettingError",
    "Completion",
    "LLMBackend",
    "SamplingParams",
    "Usage",
    "apply_stop",
    "create_backend",
    "parse_llm_spec",
]
