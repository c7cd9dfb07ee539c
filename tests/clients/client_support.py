"""Live corral servers for the real-client tests: the fake backend (fast) and Gemma 3 270M (CPU)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from corral.config import Config
from corral.engine import Engine
from corral.plugins import make_plugin_manager
from corral.runner import local_runners, subprocess_runners
from corral.server.app import create_app
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.fake import FakeBackend

# A Go template with tool support (the prompts layer finds the "<tool_call>" tag after .ToolCalls) and
# one that opens a <think> block when thinking is on.
TOOLS_TEMPLATE = (
    "{{- if .Tools }}Tools: {{ range .Tools }}{{ .Function.Name }} {{ end }}\n{{ end -}}"
    "{{- range .Messages }}{{ .Role }}: {{ .Content }}"
    "{{- if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{\"name\": \"{{ .Function.Name }}\", "
    "\"arguments\": {{ .Function.Arguments }}}</tool_call>{{ end }}{{ end }}\n{{ end }}assistant: "
)
THINK_TEMPLATE = "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}{{ if .Think }}<think>{{ end }}"
CPU_LIB = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"


async def _one(data: bytes) -> Any:
    yield data


def add_tiny_models(store: Store, gguf: Path) -> str:
    """``tiny``, ``tiny-tools`` and ``tiny-think`` from the tiny GGUF; returns the GGUF's digest."""
    data = gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    asyncio.run(store.put_blob(digest, _one(data)))
    for name, spec in (("tiny", CreateSpec(files={"tiny.gguf": digest})),
                       ("tiny-tools", CreateSpec(from_="tiny", template=TOOLS_TEMPLATE)),
                       ("tiny-think", CreateSpec(from_="tiny", template=THINK_TEMPLATE))):
        for _ in store.create(name, spec):
            pass
    return digest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """``create_app`` under uvicorn on a free port, as ``corral serve`` runs it."""

    def __init__(self, config: Config, store: Store, engine: Engine, fake: FakeBackend | None = None) -> None:
        self.config, self.store, self.engine, self.fake = config, store, engine, fake
        self.app = create_app(config, engine=engine, store=store)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> Served:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)


def fake_server(root: Path, gguf: Path) -> Served:
    """A server over the in-process fake backend with the tiny models."""
    config = Config(models=root / "models", home=root)
    store = Store(config.models)
    add_tiny_models(store, gguf)
    fake = FakeBackend()
    pm = make_plugin_manager(config, load_entrypoints=False)
    pm.register(fake, name="fake")
    engine = Engine(config, store, runner_factory=local_runners(config, pm=pm, backend="fake"))
    return Served(config, store, engine, fake).start()


def gemma_server(root: Path, gguf: Path) -> Served:
    """Gemma 3 270M and the tiny model on the CPU backend, in runner subprocesses (the production path)."""
    config = Config(models=root / "models", home=root, backend="cpu", num_parallel=2, context_length=1024)
    store = Store(config.models)
    store.ensure_default_model()
    add_tiny_models(store, gguf)
    engine = Engine(config, store, runner_factory=subprocess_runners(config, backend="cpu"))
    return Served(config, store, engine).start()
