"""Helpers for the server tests: the tiny-model store, the fake-backend harness, a live uvicorn server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from corral.config import Config
from corral.engine import Engine
from corral.plugins import load_plugins
from corral.runner import local_runners
from corral.server.app import create_app
from corral.store.store import Store
from corral.testing.fake import FakeBackend
from corral.testing.live import TOOLS_TEMPLATE, LiveServer, add_tiny_models

__all__ = ["BASE_URL", "Harness", "LiveServer", "ndjson", "seed_store", "sse"]
BASE_URL = "http://127.0.0.1:11434"
THINK_TEMPLATE = (
    "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}"
    "assistant: {{ if .Think }}<think>{{ end }}"
)


def seed_store(root: Path, gguf: Path) -> Path:
    """Fill ``root`` with ``tiny`` (the GGUF as is), ``tiny-tools`` and ``tiny-think`` (other templates)."""
    add_tiny_models(Store(root), gguf, {"tiny-tools": TOOLS_TEMPLATE, "tiny-think": THINK_TEMPLATE})
    return root


class Harness:
    """One app over its own store, with the fake backend in-process (or runner subprocesses)."""

    def __init__(self, root: Path, config: Config, *, subprocess: bool = False) -> None:
        self.config = config
        self.store = Store(root)
        self.fake = FakeBackend()
        self.host = load_plugins(config, load_entrypoints=False)
        self.host.register(self.fake, "fake")
        if subprocess:
            from corral.runner import subprocess_runners

            runners = subprocess_runners(config, backend="fake")
        else:
            runners = local_runners(config, host=self.host, backend="fake")
        self.engine = Engine(config, self.store, runner_factory=runners)
        self.app = create_app(config, engine=self.engine, store=self.store)


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
