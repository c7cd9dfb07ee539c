"""Cohere's Command-R families: R and R+ write `Action: ```json [...]```; R7B frames everything in tokens."""

from __future__ import annotations

import json

from corral.conversation import ToolCall
from corral.prompts.formats.base import MAX_CALL_CHARS, CallMaker, json_end
from corral.prompts.formats.sections import Layout, Scan, closed_by


def _actions(text: str, calls: CallMaker) -> list[ToolCall] | None:
    """A JSON list of ``{"tool_name", "parameters"}`` actions (R7B adds ``tool_call_id``) as calls."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    found: list[ToolCall] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        name = item.get("tool_name", item.get("name"))
        args = item.get("parameters", item.get("arguments", {}))
        if not isinstance(name, str) or not calls.known(name) or not isinstance(args, dict):
            return None
        found.append(calls.make(name, args))
    return found or None


# ---- Command R7B: <|START_THINKING|>...<|END_THINKING|><|START_ACTION|>[...]<|END_ACTION|>
#      and the answer inside <|START_RESPONSE|>...<|END_RESPONSE|>
COMMAND_R7B = Layout(
    "command-r7b", think=("<|START_THINKING|>", "<|END_THINKING|>"), think_ends=("<|START_ACTION|>",),
    dropped=("<|START_RESPONSE|>", "<|END_RESPONSE|>"), openers=lambda tools: ("<|START_ACTION|>",),
    scan=closed_by("<|END_ACTION|>", lambda opener, block, calls: _actions(block.strip(), calls)))

# ---- Command R / R+: Action: ```json\n[{"tool_name": ..., "parameters": {...}}]\n```
_FENCE = "```"


def _scan_action(opener: str, buf: str, final: bool, calls: CallMaker) -> Scan:
    head = buf.lstrip()
    pos = len(buf) - len(head)
    if head.startswith(_FENCE):
        nl = head.find("\n")
        label = head[3:] if nl < 0 else head[3:nl]
        if nl < 0 and not final and "json".startswith(label.strip()) and len(head) < 16:
            return "more", [], 0
        if label.strip() not in ("", "json"):
            return "text", [], 0
        pos += 3 + len(label)
        head = buf[pos:].lstrip()
        pos = len(buf) - len(head)
    elif not final and (not head or _FENCE.startswith(head)):
        return "more", [], 0
    if not head.startswith("[") and not head.startswith("{"):
        return ("more", [], 0) if not head and not final else ("text", [], 0)
    end = json_end(buf, pos)
    if end is None:
        return ("more", [], 0) if not final and len(buf) < MAX_CALL_CHARS else ("text", [], 0)
    rest = buf[end:].lstrip()
    if not final and (not rest or (_FENCE.startswith(rest) and rest != _FENCE)):
        return "more", [], 0  # the closing fence may still come
    used = len(buf) - len(rest) + 3 if rest.startswith(_FENCE) else end
    found = _actions(buf[pos:end], calls)
    return ("calls", found, used) if found else ("text", [], 0)


COMMAND_R = Layout("command-r", openers=lambda tools: ("Action:",), scan=_scan_action, wake="]}`")
