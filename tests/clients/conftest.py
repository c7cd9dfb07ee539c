"""Session servers for the real-client tests (one fake-backend server, one Gemma server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from client_support import CPU_LIB, Served, fake_server, gemma_server

from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec  # noqa: F401  (session fixtures)


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
