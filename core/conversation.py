"""Chat messages, tools and tool calls as the core sees them (both wire APIs convert to these)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct


class ToolCall(Struct, kw_only=True):
    """A call the model asked for; ``arguments`` is always a parsed JSON object."""

    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str = ""
    index: int = 0


class Message(Struct, kw_only=True):
    """One turn of a conversation. ``role`` is lowercase: system, user, assistant or tool."""

    role: str
    content: str = ""
    thinking: str = ""
    images: list[bytes] = msgspec.field(default_factory=list)
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    tool_name: str = ""
    tool_call_id: str = ""
    # A further content part of the previous message as the client sent it (the OpenAI API's parts
    # become messages of their own, as in Ollama): history truncation keeps or drops them together.
    continues: bool = False


class Tool(Struct, kw_only=True):
    """A function the model may call: name, description and a JSON-schema ``parameters`` object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    type: str = "function"
