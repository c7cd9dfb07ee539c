"""Session-scoped pytest fixtures that tests import into their conftest (``from ... import *``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.testing.tinymodel import TinyModelSpec, write_tiny_gguf

__all__ = ["tiny_gguf", "tiny_gguf_spec"]


@pytest.fixture(scope="session")
def tiny_gguf_spec(tmp_path_factory: pytest.TempPathFactory) -> TinyModelSpec:
    """The tiny llama GGUF (F32, ChatML template), written once per test session."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_gguf_spec: TinyModelSpec) -> Path:
    """Path of the tiny llama GGUF shared by the whole session."""
    return Path(tiny_gguf_spec.path)
