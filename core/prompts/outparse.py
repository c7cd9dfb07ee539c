"""Streaming parser for model output: splits thinking, tool calls and content without partial markers."""

from __future__ import annotations

import json
import re
import secrets
import string
from typing import Any

from corral.conversation import Tool, ToolCall
from corral.prompts.capabilities import COMMON_TOOL_TAGS
from corral.prompts.formats.base import ParsedDelta
from corral.prompts.formats.base import json_end as _json_end
from corral.prompts.formats.base import partial_suffix as _partial_suffix

__all__ = ["OutputParser", "ParsedDelta"]

_ID_CHARS = string.ascii_lowercase + string.digits
_CLOSERS = ("</tool_call>", "<|eom_id|>", "<|eot_id|>")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_MISTRAL_PARTIAL = re.compile(r"[A-Za-z0-9_.\-]+(\[(A(R(G(S)?)?)?)?)?")


class _ThinkSplitter:
    def __init__(self, markers: tuple[str, str], inside: bool) -> None:
        self.open, self.close = markers
        self.inside = inside
        self.seen_open = inside
        self.done = False  # reasoning happens once, at the start of the answer
        self.strip_pending = False
        self.buf = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """(thinking, content) that is safe to release."""
        self.buf += text
        thinking, content = "", ""
        while True:
            if self.done:
                if self.strip_pending:  # whitespace right after the closing marker is not content
                    self.buf = self.buf.lstrip()
                    if not self.buf:
                        break
                    self.strip_pending = False
                content += self.buf
                self.buf = ""
                break
            if not self.inside:
                stripped = self.buf.lstrip()
                if stripped.startswith(self.open):
                    self.buf = stripped[len(self.open):]
                    self.inside = self.seen_open = True
                    continue
                if not final and (not stripped or self.open.startswith(stripped)):
                    break  # could still become the opening marker
                self.done = True
                continue
            idx = self.buf.find(self.close)
            if idx >= 0:
                thinking += self.buf[:idx]
                self.buf = self.buf[idx + len(self.close):]
                self.inside = False
                self.done = True
                self.strip_pending = True
                continue
            keep = 0 if final else _partial_suffix(self.buf, [self.close])
            thinking += self.buf[: len(self.buf) - keep]
            self.buf = self.buf[len(self.buf) - keep:]
            break
        return thinking, content


class _JsonScan:
    """Where the JSON value starting at ``start`` ends, found incrementally: each call scans only the text
    that arrived since the last one, so a long unfinished payload costs linear time, not quadratic (a
    rescan per streamed token kept `corral serve` at 100 % CPU on a model that never closed its call)."""

    def __init__(self, start: int) -> None:
        self.start = self.pos = start
        self.depth = 0
        self.in_str = self.esc = False

    def end(self, s: str) -> int | None:
        depth, in_str, esc = self.depth, self.in_str, self.esc
        for i in range(self.pos, len(s)):
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
        self.pos, self.depth, self.in_str, self.esc = len(s), depth, in_str, esc
        return None


class _ToolExtractor:
    def __init__(self, tools: list[Tool], tag: str) -> None:
        self.names = {t.name for t in tools}
        self.tag = tag
        self.tags = [t for t in dict.fromkeys([tag, *COMMON_TOOL_TAGS]) if t != "{"]
        self.buf = ""
        self.in_call = False
        self.call_text = ""  # raw text of the call being parsed, released as content if it is not one
        self.at_start = True  # nothing but whitespace released yet: a bare `{` may open a call
        self.after_call = False  # a call just ended: its closing tag and whitespace are dropped
        self.index = 0
        self.scan: _JsonScan | None = None  # the payload being scanned, kept across feeds

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ToolCall]]:
        self.buf += text
        content = ""
        calls: list[ToolCall] = []
        while self.buf:
            if self.after_call:
                stripped = self.buf.lstrip()
                closer = next((c for c in _CLOSERS if stripped.startswith(c)), None)
                if closer is not None:
                    self.buf = stripped[len(closer):]
                    self.after_call = False
                    continue
                if not final and (not stripped or any(c.startswith(stripped) for c in _CLOSERS)):
                    break
                self.buf = stripped
                self.after_call = False
                if not self.buf:
                    break
            if not self.in_call:
                pos, taglen = self._find_opener()
                if pos < 0:
                    keep = 0 if final else _partial_suffix(self.buf, self.tags)
                    out = self.buf[: len(self.buf) - keep]
                    content += out
                    self.buf = self.buf[len(self.buf) - keep:]
                    self.at_start = self.at_start and not out.strip()
                    break
                content += self.buf[:pos]
                self.call_text = self.buf[pos: pos + taglen]
                self.buf = self.buf[pos + taglen:]
                self.in_call = True
                continue
            parsed = self._parse_calls(final)
            if parsed is None:
                break  # wait for more text
            ok, new_calls = parsed
            if ok:
                calls.extend(new_calls)
                self.at_start = False
                self.after_call = True
            else:
                content += self.call_text
                self.at_start = False
            self.call_text = ""
            self.in_call = False
            self.scan = None
        if final and self.in_call:
            content += self.call_text + self.buf
            self.buf, self.call_text, self.in_call, self.scan = "", "", False, None
        return content, calls

    def _find_opener(self) -> tuple[int, int]:
        best = (-1, 0)
        for t in self.tags:
            i = self.buf.find(t)
            if i >= 0 and (best[0] < 0 or i < best[0]):
                best = (i, len(t))
        brace = self.buf.find("{")
        bare_ok = self.tag == "{" or (self.at_start and not self.buf[:max(brace, 0)].strip())
        if brace >= 0 and bare_ok and (best[0] < 0 or brace < best[0]):
            best = (brace, 0)
        return best

    def _parse_calls(self, final: bool) -> tuple[bool, list[ToolCall]] | None:
        """Consume one tool-call payload from buf; None = incomplete, (False, []) = not a tool call."""
        s = self.buf
        i = len(s) - len(s.lstrip())
        if i == len(s):
            return (False, []) if final else None
        if s[i] not in "{[":
            # Mistral's newer form: [TOOL_CALLS]name[ARGS]{...}
            j = s.find("[ARGS]", i)
            if j < 0 and not final and _MISTRAL_PARTIAL.fullmatch(s[i:]):
                return None  # may still become `name[ARGS]{...}`
            if j > i and _TOOL_NAME.fullmatch(s[i:j].strip()):
                end = _json_end(s, j + 6) if j + 6 < len(s) and s[j + 6] == "{" else None
                if end is None:
                    return None if not final and len(s) - i < 1 << 16 else (False, [])
                name = s[i:j].strip()
                try:
                    args = json.loads(s[j + 6:end])
                except ValueError:
                    return False, []
                if name not in self.names:
                    return False, []
                self.call_text += s[:end]
                self.buf = s[end:]
                return True, [self._call(name, args)]
            return False, []
        if self.scan is None or self.scan.start != i:
            self.scan = _JsonScan(i)
        end = self.scan.end(s)
        if end is None:
            # an unbalanced payload longer than any real call is text
            return None if not final and len(s) < 1 << 20 else (False, [])
        try:
            value = json.loads(s[i:end])
        except ValueError:
            return False, []
        items = value if isinstance(value, list) else [value]
        calls: list[ToolCall] = []
        for item in items:
            call = self._to_call(item)
            if call is None:
                return False, []
            calls.append(call)
        self.call_text += s[:end]
        self.buf = s[end:]
        return True, calls

    def _to_call(self, item: Any) -> ToolCall | None:
        if not isinstance(item, dict):
            return None
        if isinstance(item.get("function"), dict):  # {"type": "function", "function": {...}}
            item = item["function"]
        name = item.get("name")
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(name, str) or name not in self.names or not isinstance(args, dict):
            return None
        return self._call(name, args)

    def _call(self, name: str, args: dict[str, Any]) -> ToolCall:
        call_id = "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))
        call = ToolCall(name=name, arguments=args, id=call_id, index=self.index)
        self.index += 1
        return call


class OutputParser:
    """Feeds on generated text; each delta carries only text that can no longer change meaning.

    Thinking is split off first (when enabled), then tool calls are cut out of the content (when
    the request has tools). A call is emitted once, whole, with an id and index; text that opened
    like a call but is not one comes back as content.
    """

    def __init__(self, *, think_markers: tuple[str, str] | None = None, starts_thinking: bool = False,
                 tools: list[Tool] | None = None, tool_tag: str = "{") -> None:
        self._think = _ThinkSplitter(think_markers, starts_thinking) if think_markers else None
        self._tools = _ToolExtractor(tools, tool_tag) if tools else None
        self._thinking_started = False

    def _step(self, text: str, final: bool) -> ParsedDelta:
        thinking, content = self._think.feed(text, final) if self._think else ("", text)
        if thinking and not self._thinking_started:
            thinking = thinking.lstrip()
            self._thinking_started = bool(thinking)
        calls: list[ToolCall] = []
        if self._tools is not None:
            content, calls = self._tools.feed(content, final)
        return ParsedDelta(content=content, thinking=thinking, tool_calls=calls)

    def feed(self, text: str) -> ParsedDelta:
        return self._step(text, False)

    def finish(self) -> ParsedDelta:
        """Flush what was held back; an unfinished tool call comes out as content."""
        return self._step("", True)
