"""Where a lazy tool-call constraint takes hold: a watch over the generated text for the call's opener."""

from __future__ import annotations

import codecs
import copy

from corral.types import JsonConstraint

__all__ = ["CallWatch"]


class CallWatch:
    """Fed the bytes of each generated token, says when a tool call opens and what of the token's text
    follows its opener (the constraint then starts there, as llama.cpp's lazy grammar does).

    The opener counts outside a reasoning block only. A format without an opener (bare JSON calls)
    opens a call with a "{" that starts the answer (after any reasoning and whitespace); once the
    answer started otherwise, nothing opens a call. After a call ``rearm`` watches for the next one.
    """

    def __init__(self, c: JsonConstraint) -> None:
        self._opener = c.opener
        self._markers = c.think_markers
        self._inside = c.think_inside and c.think_markers is not None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._armed = True

    def rearm(self) -> None:
        """Watch for another call (the previous one is complete)."""
        self._buf, self._armed = "", True

    def probe(self, data: bytes) -> str | None:
        """What ``feed(data)`` would return, leaving the watch as it is."""
        other = copy.copy(self)
        other._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        other._decoder.setstate(self._decoder.getstate())
        return other.feed(data)

    def feed(self, data: bytes) -> str | None:
        """The text after the opener when ``data`` completed one, else None."""
        if not self._armed:
            return None
        self._buf += self._decoder.decode(data)
        while True:
            if self._inside:
                assert self._markers is not None
                end = self._buf.find(self._markers[1])
                if end < 0:
                    self._buf = self._buf[-(len(self._markers[1]) - 1):] if len(self._markers[1]) > 1 else ""
                    return None
                self._buf, self._inside = self._buf[end + len(self._markers[1]):], False
                continue
            think = self._buf.find(self._markers[0]) if self._markers else -1
            if not self._opener:
                return self._bare(think)
            at = self._buf.find(self._opener)
            if at >= 0 and (think < 0 or at < think):
                rest, self._buf, self._armed = self._buf[at + len(self._opener):], "", False
                return rest
            if think >= 0:
                assert self._markers is not None
                self._buf, self._inside = self._buf[think + len(self._markers[0]):], True
                continue
            keep = max(len(self._opener), len(self._markers[0]) if self._markers else 0) - 1
            self._buf = self._buf[-keep:] if keep > 0 else ""
            return None

    def _bare(self, think: int) -> str | None:
        """A bare-JSON format: whether the answer starts with "{" (``think``: where a reasoning block
        opens in the buffer, -1 for none)."""
        head = self._buf.lstrip()
        if not head:
            self._buf = ""
            return None
        if head[0] == "{":
            self._buf, self._armed = "", False
            return head
        if self._markers and self._markers[0].startswith(head[: len(self._markers[0])]):
            if think < 0:
                return None  # maybe the start of a reasoning block: wait for more text
            self._buf, self._inside = self._buf[think + len(self._markers[0]):], True
            return self.feed(b"")
        self._armed = False  # the answer started with text: no bare call can open it now
        self._buf = ""
        return None
