"""Small helpers shared by the transformers-backed indicators (imported lazily)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def dtype_kwarg() -> str:
    """The `from_pretrained` keyword for the weights' dtype: `dtype` (transformers 5) or `torch_dtype`."""
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' logs and loading bars for a block (we report truncation ourselves)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
