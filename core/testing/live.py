"""Live corral servers for tests over real HTTP: a store holding the tiny GGUF, the app under uvicorn."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import uvicorn

from corral.store.records import CreateSpec
from corral.store.store import Store

__all__ = ["TOOLS_TEMPLATE", "LiveServer", "add_tiny_models", "free_port"]

# A Go template with tool support: the prompts layer infers the "<tool_call>" tag from the text after
# .ToolCalls.
TOOLS_TEMPLATE = (
    "{{- if .Tools }}Tools: {{ range .Tools }}{{ .Function.Name }} {{ end }}\n{{ end -}}"
    "{{- range .Messages }}{{ .Role }}: {{ .Content }}"
    "{{- if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{\"name\": \"{{ .Function.Name }}\", "
    "\"arguments\": {{ .Function.Arguments }}}</tool_call>{{ end }}{{ end }}\n{{ end }}assistant: "
)


def add_tiny_models(store: Store, gguf: Path, templates: Mapping[str, str]) -> str:
    """``tiny`` (the GGUF as is) and, from it, one model per ``templates`` entry (name -> Go template).

    Returns the GGUF's digest.
    """
    data = gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def one() -> AsyncIterator[bytes]:
        yield data

    asyncio.run(store.put_blob(digest, one()))
    specs = [("tiny", CreateSpec(files={"tiny.gguf": digest}))]
    specs += [(name, CreateSpec(from_="tiny", template=template)) for name, template in templates.items()]
    for name, spec in specs:
        for _ in store.create(name, spec):
            pass
    return digest


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (when asked) and this process has not handed out.

    A port is free only until somebody binds it: a test that asks for several before starting their
    servers must not get the same one twice, which the kernel may well offer again once it is closed.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class LiveServer:
    """``app`` under uvicorn in a thread on a free port: what ``corral serve`` runs, minus the CLI.

    ``start()``/``stop()``, or use it as a context manager.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
