"""Memory-aware loading on the real llama.cpp CPU backend over real HTTP: a memory limit given here
(CORRAL_MEMORY_LIMIT) makes a second model evict the idle first one, a model larger than the limit is
refused with one line, and /api/ps reports what llama.cpp allocated."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.config import Config
from corral.server.app import create_app
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.live import LiveServer
from corral.testing.tinymodel import write_tiny_gguf

# Three sizes of the tiny llama: weights grow with n_embd/n_ff, the KV cache with n_layer.
SIZES = {"small": dict(n_embd=64, n_layer=2, n_ff=128), "medium": dict(n_embd=128, n_layer=4, n_ff=256),
         "large": dict(n_embd=256, n_layer=8, n_ff=1024)}


def _store(root: Path) -> Store:
    store = Store(root / "models")
    for name, dims in SIZES.items():
        data = Path(write_tiny_gguf(root / f"{name}.gguf", seed=len(name), **dims).path).read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()

        async def chunks(data: bytes = data) -> Any:
            yield data

        asyncio.run(store.put_blob(digest, chunks()))
        for _ in store.create(name, CreateSpec(files={f"{name}.gguf": digest})):
            pass
    return store


def _serve(root: Path, store: Store, **settings: Any) -> LiveServer:
    config = Config(models=store.root, home=root / "home", backend="cpu", num_parallel=2, context_length=2048,
                    **settings)
    return LiveServer(create_app(config, store=store))


def _generate(http: httpx.Client, model: str) -> httpx.Response:
    return http.post("/api/generate", json={"model": model, "prompt": "hi", "stream": False,
                                            "options": {"num_predict": 1}})


@pytest.fixture(scope="module")
def sizes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Store, dict[str, int]]]:
    """The store, and what each model takes as llama.cpp allocated it (/api/ps with no limit)."""
    root = tmp_path_factory.mktemp("memory-live")
    store = _store(root)
    measured: dict[str, int] = {}
    with _serve(root, store) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        for name in SIZES:
            assert _generate(http, name).status_code == 200
            row = next(m for m in http.get("/api/ps").json()["models"] if m["name"] == f"{name}:latest")
            assert row["size_vram"] == 0  # the CPU backend: all of it in RAM
            measured[name] = row["size"]
            assert http.post("/api/generate", json={"model": name, "keep_alive": 0}).status_code == 200
    assert measured["small"] < measured["medium"] < measured["large"]
    yield root, store, measured


def test_loading_past_the_limit_evicts_the_idle_model(sizes: tuple[Path, Store, dict[str, int]]) -> None:
    root, store, size = sizes
    limit = size["medium"] + size["small"] // 2  # either fits alone, not both
    with _serve(root, store, memory_limit=limit) as server, httpx.Client(base_url=server.url,
                                                                          timeout=120) as http:
        assert _generate(http, "small").status_code == 200
        assert _generate(http, "medium").status_code == 200
        assert [m["name"] for m in http.get("/api/ps").json()["models"]] == ["medium:latest"]
        assert _generate(http, "small").status_code == 200
        assert [m["name"] for m in http.get("/api/ps").json()["models"]] == ["small:latest"]


def test_a_model_larger_than_the_limit_is_refused_in_one_line(sizes: tuple[Path, Store,
                                                                             dict[str, int]]) -> None:
    root, store, size = sizes
    limit = size["medium"] + size["small"] // 2
    with _serve(root, store, memory_limit=limit) as server, httpx.Client(base_url=server.url,
                                                                          timeout=120) as http:
        assert _generate(http, "small").status_code == 200
        r = _generate(http, "large")
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert "\n" not in error
        assert error.startswith("cannot load large:latest: model requires more system memory (")
        assert "CORRAL_MEMORY_LIMIT" in error
        # the refusal unloaded nothing: the small model still serves
        assert [m["name"] for m in http.get("/api/ps").json()["models"]] == ["small:latest"]
