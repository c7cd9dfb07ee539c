"""Session-scoped pytest fixtures that tests import into their conftest (``from ... import *``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.testing.tinymodel import TinyModelSpec, write_tiny_gguf
from corral.testing.tinyvision import TinyProjectorSpec, png_bytes, write_tiny_projector

__all__ = ["sample_images", "tiny_gguf", "tiny_gguf_spec", "tiny_projector"]


@pytest.fixture(scope="session")
def tiny_gguf_spec(tmp_path_factory: pytest.TempPathFactory) -> TinyModelSpec:
    """The tiny llama GGUF (F32, ChatML template), written once per test session."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_gguf_spec: TinyModelSpec) -> Path:
    """Path of the tiny llama GGUF shared by the whole session."""
    return Path(tiny_gguf_spec.path)


@pytest.fixture(scope="session")
def tiny_projector(tmp_path_factory: pytest.TempPathFactory,
                   tiny_gguf_spec: TinyModelSpec) -> TinyProjectorSpec:
    """A llava-style projector GGUF for the tiny llama model: 16 tokens per image."""
    return write_tiny_projector(tmp_path_factory.mktemp("tiny-projector") / "mmproj.gguf",
                                text_n_embd=tiny_gguf_spec.n_embd)


@pytest.fixture(scope="session")
def sample_images() -> dict[str, bytes]:
    """Two small PNGs a random projector tells apart: a flat red and a colour gradient."""
    return {"red": png_bytes(40, 30, lambda x, y: (220, 20, 30)),
            "gradient": png_bytes(40, 30, lambda x, y: (x * 6, y * 8, (x * y) % 256))}
