"""Fixtures for the prompt tests: real ModelRecords and the template files under data/."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from corral.conversation import Message, Tool
from corral.names import parse_name
from corral.store.manifest import Manifest
from corral.store.records import ModelRecord

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


def make_record(name: str = "x", *, template: str | None = None, system: str | None = None,
                messages: list[Message] | None = None, params: dict[str, Any] | None = None) -> ModelRecord:
    n = parse_name(name)
    return ModelRecord(name=n, display=n.display, digest="0" * 64,
                       modified_at=dt.datetime.now(dt.timezone.utc), size=0, manifest=Manifest(),
                       template=template, system=system,
                       messages=list(messages or []), params=dict(params or {}))


@pytest.fixture
def record_for():
    return make_record
