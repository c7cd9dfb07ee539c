"""Fixtures for the prompt tests: real ModelSpecs, the template files under data/, and the cpu backend
with the tiny generated model loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.config import Config
from corral.conversation import Message, Tool
from corral.names import parse_name
from corral.plugins import load_plugins
from corral.prompts import capabilities
from corral.selection import BackendHooks
from corral.spec import GGUFFacts, ModelFiles, ModelSpec
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec  # noqa: F401 (fixtures)
from corral.types import LoadOptions

DATA = Path(__file__).parent / "data"
CPU_LIB = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"

CONVERSATION = [
    Message(role="system", content="You are a helpful assistant"),
    Message(role="user", content="Hello"),
    Message(role="assistant", content="Hi there"),
    Message(role="user", content="Who are you"),
]
WEATHER = Tool(name="get_weather", description="Get the weather", parameters={
    "type": "object", "properties": {"city": {"type": "string", "description": "City"}},
    "required": ["city"]})


def go_template(name: str) -> str:
    return (DATA / "ollama" / f"{name}.gotmpl").read_text(encoding="utf-8").removesuffix("\n")


def jinja_template(name: str) -> str:
    return (DATA / "jinja" / f"{name}.jinja").read_text(encoding="utf-8")


def make_spec(name: str = "x", *, template: str | None = None, system: str | None = None,
              messages: list[Message] | None = None, params: dict[str, Any] | None = None,
              kv: dict[str, Any] | None = None, projector: str | None = None, parser: str = "",
              renderer: str = "") -> ModelSpec:
    """A spec as ``Store.resolve`` builds one: capabilities from the template, GGUF facts and projector."""
    n = parse_name(name)
    facts = GGUFFacts.from_kv(kv)
    return ModelSpec(name=n.full, display=n.display, digest="0" * 64, files=ModelFiles(projector=projector),
                     template=template, system=system, messages=tuple(messages or ()),
                     parameters=dict(params or {}), gguf=facts, parser=parser, renderer=renderer,
                     capabilities=tuple(capabilities(template, facts, projector=projector, parser=parser)))


@pytest.fixture(scope="module")
def tiny_hooks(tiny_gguf: Path) -> Iterator[tuple[BackendHooks, Any]]:  # noqa: F811 (the fixture)
    """The cpu backend through its hooks, with the tiny generated model loaded (a module's worth)."""
    if not (any(CPU_LIB.glob("_llama_cpu*")) and any(CPU_LIB.glob("libllama*"))):
        pytest.skip("plugins/cpu/_lib is not built: run build_backends.py --backend cpu")
    hooks = BackendHooks(load_plugins(Config(load_plugins=("cpu",))), "cpu")
    handle = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=512, num_parallel=1))
    yield hooks, handle
    hooks.unload(handle)
