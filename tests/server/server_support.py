"""Helpers for the server tests: the tiny-model store, the fake-backend harness, a live uvicorn server."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from corral.config import Config
from corral.engine import Engine
from corral.plugins import make_plugin_manager
from corral.runner import local_runners
from corral.server.app import create_app
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.fake import FakeBackend

BASE_URL = "http://127.0.0.1:11434"
# A Go template with tool support: the prompts layer infers the "<tool_call>" tag from the text after
# .ToolCalls.
TOOLS_TEMPLATE = (
    "{{- if .Tools }}Tools: {{ range .Tools }}{{ .Function.Name }} {{ end }}\n{{ end -}}"
    "{{- range .Messages }}{{ .Role }}: {{ .Content }}"
    "{{- if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{\"name\": \"{{ .Function.Name }}\", "
    "\"arguments\": {{ .Function.Arguments }}}</tool_call>{{ end }}{{ end }}\n{{ end }}assistant: "
)
THINK_TEMPLATE = (
    "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}"
    "assistant: {{ if .Think }}<think>{{ end }}"
)


async def _one(data: bytes) -> Any:
    yield data


def seed_store(root: Path, gguf: Path) -> Path:
    """Fill ``root`` with ``tiny`` (the GGUF as is), ``tiny-tools`` and ``tiny-think`` (other templates)."""
    store = Store(root)
    data = gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    asyncio.run(store.put_blob(digest, _one(data)))
    for name, spec in (("tiny", CreateSpec(files={"tiny.gguf": digest})),
                       ("tiny-tools", CreateSpec(from_="tiny", template=TOOLS_TEMPLATE)),
                       ("tiny-think", CreateSpec(from_="tiny", template=THINK_TEMPLATE))):
        for _ in store.create(name, spec):
            pass
    return root


class Harness:
    """One app over its own store, with the fake backend in-process (or runner subprocesses)."""

    def __init__(self, root: Path, config: Config, *, subprocess: bool = False) -> None:
        self.config = config
        self.store = Store(root)
        self.fake = FakeBackend()
        self.pm = make_plugin_manager(config, load_entrypoints=False)
        self.pm.register(self.fake, name="fake")
        if subprocess:
            from corral.runner import subprocess_runners

            runners = subprocess_runners(config, backend="fake")
        else:
            runners = local_runners(config, pm=self.pm, backend="fake")
        self.engine = Engine(config, self.store, runner_factory=runners)
        self.app = create_app(config, engine=self.engine, store=self.store, pm=self.pm)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The app under uvicorn in a thread on a free port: what ``corral serve`` runs, minus the CLI."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def ndjson(text: str) -> list[dict[str, Any]]:
    """The objects of an NDJSON body, checking there are no blank or non-JSON lines."""
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    return [msgspec.json.decode(line) for line in lines]


def sse(text: str) -> list[Any]:
    """The events of an SSE body; the last must be ``[DONE]``."""
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    return [msgspec.json.decode(e[6:]) for e in events[:-1]]
