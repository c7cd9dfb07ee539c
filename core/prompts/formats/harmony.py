"""gpt-oss's harmony format: headed messages, reasoning on `analysis`, tool calls on `commentary`.

An answer is a run of messages, each ``<|start|>HEADER<|message|>BODY<|end|>``, the last one ended by
``<|return|>`` or ``<|call|>`` (end-of-generation tokens, never seen as text). The prompt opens the
first message with ``<|start|>assistant``. A header is a role, ``<|channel|>NAME`` and optionally
``to=RECIPIENT`` (before or after the channel) and ``<|constrain|>json``. Bodies on ``analysis``
are reasoning, on ``final`` (and ``commentary`` without a recipient) the answer; a body addressed
``to=functions.NAME`` holds that tool's JSON arguments.
"""

from __future__ import annotations

import re
import unicodedata

from corral.conversation import Tool
from corral.prompts.formats.base import (
    MAX_CALL_CHARS,
    CallMaker,
    ParsedDelta,
    find_first,
    json_object,
    partial_suffix,
)

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
CONSTRAIN = "<|constrain|>"
RETURN, CALL = "<|return|>", "<|call|>"
_BUILTINS = ("browser.search", "browser.open", "browser.find", "python")
MAX_HEADER_CHARS = 4096  # a header is a few words; anything longer is not one


class ToolNames:
    """Tool names as harmony writes them: TypeScript identifiers, unique, mapped back on the way out.

    compat(ollama): harmony/harmonyparser.go FunctionNameMap: space, `-` and `.` become `_`, other
    characters that are not letters, digits, `_` or `$` are dropped, a leading digit gets `_`, a
    clash gets `_2`, `_3`...; the built-in tools keep their names.
    """

    def __init__(self, tools: list[Tool]) -> None:
        self.to_model: dict[str, str] = {}
        self.to_user: dict[str, str] = {}
        for t in tools:
            self.add(t.name)

    def add(self, name: str) -> str:
        if name in self.to_model:
            return self.to_model[name]
        if name in _BUILTINS:
            cand = name
        else:
            base = "".join("_" if c in " -." else c for c in name
                           if c in " -._$" or unicodedata.category(c)[0] in "LN")
            base = base or "unnamed"
            base = "_" + base if base[0].isdigit() else base
            cand, n = base, 2
            while cand in self.to_user:
                cand, n = f"{base}_{n}", n + 1
        self.to_model[name] = cand
        self.to_user[cand] = name
        return cand

    def user_name(self, model_name: str) -> str:
        return self.to_user.get(model_name, model_name)


def rename_tools(tools: list[Tool]) -> list[Tool]:
    """The tools as the prompt shows them to the model (names made valid identifiers)."""
    names = ToolNames(tools)
    return [Tool(name=names.to_model[t.name], description=t.description, parameters=t.parameters, type=t.type)
            for t in tools]


class Header:
    """A parsed message header."""

    def __init__(self, raw: str) -> None:
        raw = raw.replace(CONSTRAIN, " " + CONSTRAIN).strip()
        self.channel = ""
        i = raw.find(CHANNEL)
        if i >= 0:
            rest = raw[i + len(CHANNEL):]
            m = re.match(r"\S*", rest)
            name = m.group(0) if m else ""
            self.channel = name.split(CONSTRAIN, 1)[0]
            raw = (raw[:i] + " " + rest[len(name):]).strip()
        words = raw.split()
        self.role = words[0] if words else ""
        self.recipient = ""
        for w in words:
            if w.startswith("to="):
                self.recipient = w[3:]
                break
        if self.role.startswith("to="):
            self.role = "tool"


def _prompt_tail(prompt: str) -> str:
    """What the prompt already wrote of the answer's first message (after its last `<|start|>`)."""
    i = prompt.rfind(START)
    if i < 0:
        return START + "assistant"
    tail = prompt[i:]
    # a finished message (or one the prompt closed) means the answer starts a new one
    if END in tail or CALL in tail or RETURN in tail:
        return ""
    return tail


class HarmonyParser:
    """Streams a harmony answer into reasoning, content and tool calls.

    compat(ollama): like harmony/harmonyparser.go the parser starts inside the message the prompt
    opened; reasoning is split out whether or not thinking was asked for (gpt-oss always reasons).
    A call is emitted once its message ends (at ``<|call|>``, i.e. the end of the answer, or at a
    following ``<|start|>``); a body addressed to a tool the request did not offer, or one whose
    JSON does not parse, is dropped, as llama.cpp does with unsolicited built-in calls.
    """

    def __init__(self, *, tools: list[Tool], prompt: str = "") -> None:
        self.names = ToolNames(tools)
        self.calls = CallMaker(tools)
        self.buf = ""
        self.state = "between"  # between | header | body
        self.header: Header | None = None
        self.args = ""  # the body of a message addressed to a tool
        self.thinking_started = False
        # the prompt opened the answer's first message (and may have prefilled some of it): read
        # that part as the model's own, without emitting it
        self.buf = _prompt_tail(prompt)
        while self._step(ParsedDelta(), final=False):
            pass

    def feed(self, text: str) -> ParsedDelta:
        return self._run(text, final=False)

    def finish(self) -> ParsedDelta:
        return self._run("", final=True)

    def _run(self, text: str, final: bool) -> ParsedDelta:
        self.buf += text
        out = ParsedDelta()
        while self._step(out, final):
            pass
        if final:
            self._end_message(out)
        if out.thinking and not self.thinking_started:
            out.thinking = out.thinking.lstrip()
            self.thinking_started = bool(out.thinking)
        return out

    def _step(self, out: ParsedDelta, final: bool) -> bool:
        if self.state == "between":
            i, marker = find_first(self.buf, (START, CHANNEL))
            if i < 0:
                # text outside any message is not part of the answer; keep what may start one
                keep = 0 if final else partial_suffix(self.buf, [START, CHANNEL])
                self.buf = self.buf[len(self.buf) - keep:]
                return False
            # gpt-oss sometimes leaves out `<|start|>assistant` before a header: it is implied
            self.buf = self.buf[i + len(START):] if marker == START else "assistant" + self.buf[i:]
            self.state = "header"
            return True
        if self.state == "header":
            i = self.buf.find(MESSAGE)
            if i < 0:
                if len(self.buf) > MAX_HEADER_CHARS:
                    self.buf, self.state = "", "between"
                return False
            self.header = Header(self.buf[:i])
            self.buf, self.state = self.buf[i + len(MESSAGE):], "body"
            return True
        # body: runs to <|end|>, or to a <|start|> that opens the next message
        i = min((j for j in (self.buf.find(END), self.buf.find(START)) if j >= 0), default=-1)
        if i >= 0:
            self._body(out, self.buf[:i])
            self._end_message(out)
            skip = len(END) if self.buf.startswith(END, i) else 0
            self.buf, self.state = self.buf[i + skip:], "between"
            return True
        keep = 0 if final else partial_suffix(self.buf, [END, START])
        self._body(out, self.buf[: len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep:]
        return False

    def _body(self, out: ParsedDelta, text: str) -> None:
        h = self.header
        if not text or h is None:
            return
        if h.recipient:
            if len(self.args) + len(text) <= MAX_CALL_CHARS:
                self.args += text
        elif h.channel == "analysis":
            out.thinking += text
        else:  # final, or commentary meant for the user (a preamble)
            out.content += text

    def _end_message(self, out: ParsedDelta) -> None:
        h, self.header = self.header, None
        args, self.args = self.args, ""
        if h is None or not h.recipient:
            return
        name = self.names.user_name(h.recipient.removeprefix("functions."))
        parsed = json_object(args.strip() or "{}")
        if parsed is not None and self.calls.known(name):
            out.tool_calls.append(self.calls.make(name, parsed))
