"""Fixtures for the model store tests: a store, the in-process registry, a tiny GGUF."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from corral.store import Progress, Store, TransferSettings
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec  # noqa: F401
from corral.testing.registry import TestRegistry

# Small parts and quick retries so faults show up fast on kilobyte blobs.
FAST = TransferSettings(parts=4, min_part=16 * 1024, max_part=64 * 1024, parallel=4, retries=3,
                        backoff=0.01, backoff_max=0.05, stall_timeout=1.0, connect_timeout=2.0,
                        progress_interval=0.01, save_interval=0.0, disk_margin=0)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models", transfer=FAST)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[TestRegistry]:
    with TestRegistry(tmp_path / "registry") as reg:
        yield reg


def collect(agen: AsyncIterator[Progress]) -> list[Progress]:
    async def go() -> list[Progress]:
        return [p async for p in agen]

    return asyncio.run(go())


def statuses(progress: list[Progress]) -> list[str]:
    out: list[str] = []
    for p in progress:
        if not out or out[-1] != p.status:
            out.append(p.status)
    return out
