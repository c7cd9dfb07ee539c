"""Fixtures for the RPC tests: the Gemma store every server of the module shares (read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rpc_cluster import cpu_built


@pytest.fixture(scope="session")
def gemma_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding gemma3:270m, imported once; servers only read it."""
    if not cpu_built():
        pytest.skip("the cpu backend with llama.cpp's RPC module is not built (plugins/cpu/_lib)")
    from corral.store.store import Store

    root = tmp_path_factory.mktemp("rpc-models")
    Store(root).ensure_default_model()
    return root
