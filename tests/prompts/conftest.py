"""Fixtures for the prompt tests: real ModelSpecs and the template files under data/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.conversation import Message, Tool
from corral.names import parse_name
from corral.prompts import capabilities
from corral.spec import GGUFFacts, ModelFiles, ModelSpec

DATA = Path(__file__).parent / "data"

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
