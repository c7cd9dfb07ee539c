"""Fixtures for the server wire tests: a store holding the tiny model, the fake backend, the app."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient
from server_support import BASE_URL, Harness, seed_store

from corral.config import Config
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec  # noqa: F401  (session fixtures)


@pytest.fixture(scope="session")
def store_seed(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Path:  # noqa: F811
    """The seed store, built once; each test gets a copy."""
    return seed_store(tmp_path_factory.mktemp("seed-store"), tiny_gguf)


@pytest.fixture
def make_harness(store_seed: Path, tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Build a Harness; keyword arguments override Config fields (api_key, origins, max_body, ...)."""
    made = 0

    def make(*, subprocess: bool = False, **overrides: Any) -> Harness:
        nonlocal made
        made += 1
        root = tmp_path / f"models{made}"
        shutil.copytree(store_seed, root)
        config = msgspec.structs.replace(Config(models=root, home=tmp_path), **overrides)
        return Harness(root, config, subprocess=subprocess)

    yield make


@pytest.fixture
def sample_png() -> str:
    """A small PNG, base64 as the native API takes images."""
    from corral.testing.tinyvision import png_bytes

    return base64.b64encode(png_bytes(8, 8, lambda x, y: (x * 30, y * 30, 0))).decode()


@pytest.fixture
def sample_png_url(sample_png: str) -> str:
    """The same PNG as a data URI, as OpenAI's ``image_url`` takes it."""
    return "data:image/png;base64," + sample_png


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


@pytest.fixture
def client(harness: Harness) -> Iterator[TestClient[Any]]:
    with TestClient(harness.app, base_url=BASE_URL) as c:
        yield c
