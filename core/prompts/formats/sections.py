"""The streaming engine for families that mark reasoning and tool calls with literal tags in the text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from corral.conversation import Tool, ToolCall
from corral.prompts.formats.base import MAX_CALL_CHARS, CallMaker, ParsedDelta, find_first, partial_suffix

# what a scanner makes of the text after a tool-call opener: wait for more, calls (and how many
# characters they took), or not a call at all (the opener is then plain text)
Scan = tuple[Literal["more", "calls", "text"], list[ToolCall], int]
Scanner = Callable[[str, str, bool, CallMaker], Scan]
Decoder = Callable[[str, str, CallMaker], list[ToolCall] | None]


def closed_by(closer: str, decode: Decoder) -> Scanner:
    """A scanner for blocks that end with `closer`; `decode(opener, block, calls)` reads one block.

    A block the answer ends inside of (the closer never came) is decoded as it is, since some
    families let the end of the turn close it.
    """

    def scan(opener: str, buf: str, final: bool, calls: CallMaker) -> Scan:
        i = buf.find(closer)
        if i < 0:
            if not final and len(buf) < MAX_CALL_CHARS:
                return "more", [], 0
            found = decode(opener, buf, calls) if len(buf) < MAX_CALL_CHARS else None
            return ("calls", found, len(buf)) if found else ("text", [], 0)
        found = decode(opener, buf[:i], calls)
        return ("calls", found, i + len(closer)) if found else ("text", [], 0)

    return scan


@dataclass(frozen=True)
class Layout:
    """How one family lays out an answer: its reasoning markers, tool-call openers and scanner."""

    name: str
    think: tuple[str, str] | None = None
    think_ends: tuple[str, ...] = ()  # other text that ends reasoning without its closing marker
    dropped: tuple[str, ...] = ()  # markers that frame the answer's text and are not part of it
    openers: Callable[[list[Tool]], tuple[str, ...]] = field(default=lambda tools: ())
    scan: Scanner | None = None
    # characters one of which must arrive before a block can be complete (the closer's last one):
    # the scanner runs again only then, so a call the model never closes costs no rescans
    wake: str = ">"


class SectionParser:
    """Splits one answer into thinking, content and whole tool calls, however the text is chunked.

    Reasoning comes first when thinking is on (and may have been opened by the prompt); then
    content, where each tool-call opener starts a block that the family's scanner turns into calls.
    A block that turns out not to be a call is released as text; whitespace after a closed
    reasoning block or a call is dropped. No delta ever ends with part of a marker.
    """

    def __init__(self, layout: Layout, *, tools: list[Tool], think: bool, starts_thinking: bool) -> None:
        self.layout = layout
        self.calls = CallMaker(tools)
        self.openers = layout.openers(tools) if tools and layout.scan is not None else ()
        self.think = layout.think if think else None
        self.phase = "content"
        if self.think is not None:
            self.phase = "thinking" if starts_thinking else "maybe_think"
        self.buf = ""
        self.opener = ""
        self.scanned = 0  # how much of the block the scanner has seen
        self.skip_space = False
        self.thinking_started = False

    def feed(self, text: str) -> ParsedDelta:
        return self._run(text, final=False)

    def finish(self) -> ParsedDelta:
        return self._run("", final=True)

    def _run(self, text: str, final: bool) -> ParsedDelta:
        self.buf += text
        out = ParsedDelta()
        while self._step(out, final):
            pass
        if out.thinking and not self.thinking_started:
            out.thinking = out.thinking.lstrip()
            self.thinking_started = bool(out.thinking)
        return out

    def _step(self, out: ParsedDelta, final: bool) -> bool:
        """Advance one phase; False when the buffer needs more text (or is empty)."""
        if self.phase == "maybe_think":
            assert self.think is not None
            head = self.buf.lstrip()
            if head.startswith(self.think[0]):
                self.buf, self.phase = head[len(self.think[0]):], "thinking"
                return True
            if not final and (not head or self.think[0].startswith(head)):
                return False  # may still become the opening marker
            self.phase = "content"
            return True
        if self.phase == "thinking":
            return self._thinking(out, final)
        if self.phase == "tool":
            return self._tool(out, final)
        return self._content(out, final)

    def _thinking(self, out: ParsedDelta, final: bool) -> bool:
        assert self.think is not None
        # the tool-call opener may end reasoning too, but only when the request has tools
        ends = (self.think[1], *(self.layout.think_ends if self.openers else ()))
        i, marker = find_first(self.buf, ends)
        if i >= 0:
            out.thinking += self.buf[:i]
            closed = marker == self.think[1]
            self.buf = self.buf[i + len(marker):] if closed else self.buf[i:]
            self.phase, self.skip_space = "content", closed
            return True
        keep = 0 if final else partial_suffix(self.buf, ends)
        out.thinking += self.buf[: len(self.buf) - keep]
        self.buf = self.buf[len(self.buf) - keep:]
        return False

    def _content(self, out: ParsedDelta, final: bool) -> bool:
        if self.skip_space:
            head = self.buf.lstrip()
            if not head and not final:
                self.buf = ""
                return False
            self.buf, self.skip_space = head, False
        markers = (*self.openers, *self.layout.dropped)
        i, marker = find_first(self.buf, markers)
        if i < 0:
            keep = 0 if final else partial_suffix(self.buf, markers)
            out.content += self.buf[: len(self.buf) - keep]
            self.buf = self.buf[len(self.buf) - keep:]
            return False
        out.content += self.buf[:i]
        self.buf = self.buf[i + len(marker):]
        if marker in self.openers:
            self.opener, self.phase, self.scanned = marker, "tool", 0
        return True

    def _tool(self, out: ParsedDelta, final: bool) -> bool:
        assert self.layout.scan is not None
        seen, self.scanned = self.scanned, len(self.buf)
        # a short block is cheap to look at again; a long one only once a closing character comes
        if not final and seen >= 64 and not any(c in self.buf[seen:] for c in self.layout.wake):
            return False
        status, calls, used = self.layout.scan(self.opener, self.buf, final, self.calls)
        if status == "more" and not final:
            return False
        if status == "calls":
            out.tool_calls.extend(calls)
            self.buf = self.buf[used:]
            self.skip_space = True
        else:
            out.content += self.opener  # not a call after all: the opener was text
        self.phase = "content"
        return True
