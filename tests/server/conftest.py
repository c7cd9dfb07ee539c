"""Fixtures for the server wire tests: a store holding the tiny model, the fake backend, the app."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from corral.config import Config
from corral.engine import Engine
from corral.plugins import make_plugin_manager
from corral.runner import local_runners
from corral.server.app import create_app
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.fake import FakeBackend
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec  # noqa: F401  (session fixtures)

BASE_URL = "http://127.0.0.1:11434"
# A Go template with tool support: prompts infer the "<tool_call>" tag from the text after .ToolCalls.
TOOLS_TEMPLATE = (
    "{{- if .Tools }}Tools: {{ range .Tools }}{{ .Function.Name }} {{ end }}\n{{ end -}}"
    "{{- range .Messages }}{{ .Role }}: {{ .Content }}"
    "{{- if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{\"name\": \"{{ .Function.Name }}\", "
    "\"arguments\": {{ .Function.Arguments }}}</tool_call>{{ end }}{{ end }}\n{{ end }}assistant: "
)
THINK_TEMPLATE = (
    "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}"
    "{{ if .Think }}<think>{{ end }}assistant: "
)


async def _one(data: bytes) -> Any:
    yield data


@pytest.fixture(scope="session")
def store_seed(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Path:  # noqa: F811
    """A model store with ``tiny`` (the tiny GGUF) and ``tiny-tools``, built once and copied per test."""
    root = tmp_path_factory.mktemp("seed-store")
    store = Store(root)
    data = tiny_gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    asyncio.run(store.put_blob(digest, _one(data)))
    for _ in store.create("tiny", CreateSpec(files={"tiny.gguf": digest})):
        pass
    for _ in store.create("tiny-tools", CreateSpec(from_="tiny", template=TOOLS_TEMPLATE)):
        pass
    for _ in store.create("tiny-think", CreateSpec(from_="tiny", template=THINK_TEMPLATE)):
        pass
    return root


class Harness:
    """One app over a fresh copy of the seed store, with its own fake backend."""

    def __init__(self, root: Path, config: Config) -> None:
        self.config = config
        self.store = Store(root)
        self.fake = FakeBackend()
        self.pm = make_plugin_manager(config, load_entrypoints=False)
        self.pm.register(self.fake, name="fake")
        runners = local_runners(config, pm=self.pm, backend="fake")
        self.engine = Engine(config, self.store, runner_factory=runners)
        self.app = create_app(config, engine=self.engine, store=self.store, pm=self.pm)


@pytest.fixture
def make_harness(store_seed: Path, tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Build a Harness; keyword arguments override Config fields (api_key, origins, max_body, ...)."""
    made = 0

    def make(**overrides: Any) -> Harness:
        nonlocal made
        made += 1
        root = tmp_path / f"models{made}"
        shutil.copytree(store_seed, root)
        config = msgspec.structs.replace(Config(models=root, home=tmp_path), **overrides)
        return Harness(root, config)

    yield make


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


@pytest.fixture
def client(harness: Harness) -> Iterator[TestClient[Any]]:
    with TestClient(harness.app, base_url=BASE_URL) as c:
        yield c


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
