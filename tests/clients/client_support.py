"""Live corral servers for the real-client tests: the fake backend (fast) and Gemma 3 270M (CPU)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.config import Config
from corral.engine import Engine
from corral.plugins import load_plugins
from corral.runner import local_runners, subprocess_runners
from corral.server.app import create_app
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.fake import FakeBackend
from corral.testing.live import TOOLS_TEMPLATE, LiveServer, add_tiny_models

# One template that opens a <think> block when thinking is on; tiny-tools uses TOOLS_TEMPLATE (the prompts
# layer finds the "<tool_call>" tag after .ToolCalls).
THINK_TEMPLATE = "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}{{ if .Think }}<think>{{ end }}"
TEMPLATES = {"tiny-tools": TOOLS_TEMPLATE, "tiny-think": THINK_TEMPLATE}
CPU_LIB = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"


class Served(LiveServer):
    """``create_app`` under uvicorn on a free port, as ``corral serve`` runs it."""

    def __init__(self, config: Config, store: Store, engine: Engine, fake: FakeBackend | None = None) -> None:
        self.config, self.store, self.engine, self.fake = config, store, engine, fake
        super().__init__(create_app(config, engine=engine, store=store))


def fake_server(root: Path, gguf: Path, **settings: Any) -> Served:
    """A server over the in-process fake backend with the tiny models (``settings``: Config fields)."""
    config = Config(models=root / "models", home=root, **settings)
    store = Store(config.models)
    add_tiny_models(store, gguf, TEMPLATES)
    fake = FakeBackend()
    host = load_plugins(config, load_entrypoints=False)
    host.register(fake, "fake")
    engine = Engine(config, store, runner_factory=local_runners(config, host=host, backend="fake"))
    served = Served(config, store, engine, fake)
    served.start()
    return served


def vision_server(root: Path, gguf: Path, projector: Path, **config: object) -> Served:
    """The tiny model with its projector (tiny-vision; tiny-vision-tools with a tools template) and
    alone (tiny), on the CPU backend in runner subprocesses."""
    config = Config(models=root / "models", home=root, backend="cpu", num_parallel=2, context_length=512,
                    **config)  # type: ignore[arg-type]
    store = Store(config.models)
    add_tiny_models(store, gguf, {})
    data = projector.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def one() -> AsyncIterator[bytes]:
        yield data

    asyncio.run(store.put_blob(digest, one()))
    model_digest = store.get("tiny").model_digest or ""
    files = {"tiny.gguf": model_digest, "mmproj.gguf": digest}
    for name, spec in (("tiny-vision", CreateSpec(files=files, parameters={"temperature": 0})),
                       ("tiny-vision-tools", CreateSpec(from_="tiny-vision", template=TOOLS_TEMPLATE))):
        for _ in store.create(name, spec):
            pass
    engine = Engine(config, store, runner_factory=subprocess_runners(config, backend="cpu"))
    served = Served(config, store, engine)
    served.start()
    return served


def gemma_server(root: Path, gguf: Path) -> Served:
    """Gemma 3 270M and the tiny model on the CPU backend, in runner subprocesses (the production path)."""
    config = Config(models=root / "models", home=root, backend="cpu", num_parallel=2, context_length=1024)
    store = Store(config.models)
    store.ensure_default_model()
    add_tiny_models(store, gguf, TEMPLATES)
    engine = Engine(config, store, runner_factory=subprocess_runners(config, backend="cpu"))
    served = Served(config, store, engine)
    served.start()
    return served


def access_logged(caplog: pytest.LogCaptureFixture, fragment: str) -> bool:
    """Whether an access log line holds ``fragment`` (the line is written just after the answer is sent,
    on the server's thread: it is waited for)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(fragment in r.getMessage() for r in caplog.records if r.name == "corral.server.access"):
            return True
        time.sleep(0.02)
    return False
