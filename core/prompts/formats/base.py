"""What the model-family output parsers share: the delta, held-back marker prefixes, call ids, types."""

from __future__ import annotations

import json
import math
import secrets
import string
from typing import Any, Protocol

import msgspec

from corral.conversation import Tool, ToolCall

_ID_CHARS = string.ascii_lowercase + string.digits
MAX_CALL_CHARS = 1 << 20  # a tool call longer than this is not one: its text is released as content


class ParsedDelta(msgspec.Struct, kw_only=True):
    """What one piece of model output adds to the answer."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)


class StreamParser(Protocol):
    """Feeds on generated text; each delta carries only text that can no longer change meaning."""

    def feed(self, text: str) -> ParsedDelta: ...

    def finish(self) -> ParsedDelta:
        """Flush what was held back at the end of the answer."""
        ...


def partial_suffix(buf: str, markers: list[str] | tuple[str, ...]) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of one of `markers`."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(buf)), best, -1):
            if buf.endswith(m[:n]):
                best = n
                break
    return best


def find_first(buf: str, markers: list[str] | tuple[str, ...], start: int = 0) -> tuple[int, str]:
    """(index, marker) of the earliest marker in `buf` (the longest one on a tie), or (-1, "")."""
    best, found = -1, ""
    for m in markers:
        i = buf.find(m, start)
        if i >= 0 and (best < 0 or i < best or (i == best and len(m) > len(found))):
            best, found = i, m
    return best, found


def json_end(s: str, start: int) -> int | None:
    """Index just past the JSON object/array starting at `start`, or None while it is incomplete."""
    depth = 0
    in_str = False
    esc = False
    for i in range(start, len(s)):
        c = s[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def json_object(text: str) -> dict[str, Any] | None:
    """`text` parsed as a JSON object (a JSON string holding one is unwrapped), else None."""
    try:
        value = json.loads(text)
        if isinstance(value, str):
            value = json.loads(value)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class CallMaker:
    """Numbers the calls of one answer and gives each an id (``call_`` and 8 random characters)."""

    def __init__(self, tools: list[Tool]) -> None:
        self.tools = {t.name: t for t in tools}
        self.index = 0

    def known(self, name: str) -> bool:
        return name in self.tools

    def make(self, name: str, arguments: dict[str, Any], call_id: str = "") -> ToolCall:
        call_id = call_id or "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))
        call = ToolCall(name=name, arguments=arguments, id=call_id, index=self.index)
        self.index += 1
        return call

    def param_types(self, name: str, param: str) -> list[str]:
        """The JSON-schema types the tool declares for one parameter ([] when it says nothing)."""
        tool = self.tools.get(name)
        props = (tool.parameters or {}).get("properties") if tool else None
        prop = props.get(param) if isinstance(props, dict) else None
        if not isinstance(prop, dict):
            return []
        types: list[str] = []
        for p in [prop, *(prop.get("anyOf") or []), *(prop.get("oneOf") or [])]:
            t = p.get("type") if isinstance(p, dict) else None
            types += [t] if isinstance(t, str) else [x for x in t or [] if isinstance(x, str)]
        return types


def typed_value(raw: str, types: list[str]) -> Any:
    """A parameter written as text, read as the most specific type its schema allows.

    compat(ollama): model/parsers/qwen3coder.go parseValue: "null" is null whatever the type; then
    boolean, integer, number, array, object; a string type (or no type) keeps the text; a value that
    fits none of a single declared type stays text.
    """
    if raw.lower() == "null":
        return None
    if not types:
        return raw
    kinds = set(types)
    if "boolean" in kinds:
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        if len(kinds) == 1:
            return False
    if "integer" in kinds:
        try:
            return int(raw, 10)
        except ValueError:
            pass
    if "number" in kinds:
        try:
            f = float(raw)
        except ValueError:
            pass
        else:
            if math.isfinite(f):
                return int(f) if f.is_integer() and abs(f) < 2**63 else f
    for kind, py in (("array", list), ("object", dict)):
        if kind in kinds:
            try:
                v = json.loads(raw)
            except ValueError:
                continue
            if isinstance(v, py):
                return v
    return raw
