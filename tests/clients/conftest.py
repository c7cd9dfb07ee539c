"""Session servers for the real-client tests (one fake-backend server, one Gemma server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from client_support import CPU_LIB, Served, fake_server, gemma_server, vision_server

from corral.testing.fixtures import sample_images, tiny_gguf, tiny_gguf_spec, tiny_projector  # noqa: F401


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Served]:  # noqa: F811
    srv = fake_server(tmp_path_factory.mktemp("served"), tiny_gguf)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def gemma_served(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Served]:  # noqa: F811
    if not any(CPU_LIB.glob("libllama*")):
        pytest.skip("the CPU backend is not built (plugins/cpu/_lib is empty)")
    srv = gemma_server(tmp_path_factory.mktemp("gemma"), tiny_gguf)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def vision_served(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path,  # noqa: F811
                  tiny_projector) -> Iterator[Served]:  # noqa: F811
    """tiny-vision (the tiny model and its projector) and tiny, on the CPU backend."""
    if not any(CPU_LIB.glob("libllama*")):
        pytest.skip("the CPU backend is not built (plugins/cpu/_lib is empty)")
    srv = vision_server(tmp_path_factory.mktemp("vision"), tiny_gguf, Path(tiny_projector.path))
    yield srv
    srv.stop()
