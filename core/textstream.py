"""Helpers for backends: UTF-8-safe decoding of token bytes and stop-string hold-back."""

from __future__ import annotations

import codecs

__all__ = ["StopMatcher", "Utf8Decoder"]


class Utf8Decoder:
    """Feed raw token bytes, get back only complete UTF-8 characters.

    A token often ends inside a multi-byte character (byte-fallback vocabularies split emoji into
    several tokens), so the tail is kept until the next feed completes it. Invalid bytes become
    U+FFFD; decoding never raises, because a model can emit any byte sequence.
    """

    __slots__ = ("_dec",)

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        """The characters completed by ``data`` (possibly "")."""
        return self._dec.decode(data, final=False)

    def flush(self) -> str:
        """Whatever is still held, with an unfinished character replaced by U+FFFD; then reset."""
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out

    @property
    def pending(self) -> bool:
        """True while an incomplete character is held back."""
        return bool(self._dec.getstate()[0])


class StopMatcher:
    """Hold back generated text that could still become a stop string; cut at the first stop.

    ``feed(text)`` returns ``(emit, stopped)``. ``emit`` is text that can no longer be part of a
    stop string. Once ``stopped`` is True the stop string and everything after it are dropped and
    later feeds return ``("", True)``. ``flush()`` releases the held tail at the end of a stream.
    """

    __slots__ = ("_buf", "_stopped", "stops", "matched")

    def __init__(self, stops: list[str] | tuple[str, ...] | None = None) -> None:
        # Empty strings would match everywhere; they are meaningless as stop strings, so ignore them.
        self.stops: tuple[str, ...] = tuple(s for s in (stops or ()) if s)
        self._buf = ""
        self._stopped = False
        self.matched: str | None = None  # the stop string that ended the stream, if any

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def held(self) -> str:
        """Text currently held back (not yet emitted)."""
        return self._buf

    def feed(self, text: str) -> tuple[str, bool]:
        if self._stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self._buf + text
        # The earliest stop occurrence wins; among stops starting at the same place, the longest.
        first: tuple[int, int] | None = None
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (first is None or i < first[0] or (i == first[0] and len(s) > first[1])):
                first = (i, len(s))
        if first is not None:
            self._stopped = True
            self.matched = buf[first[0] : first[0] + first[1]]
            self._buf = ""
            return buf[: first[0]], True
        keep = self._holdback(buf)
        self._buf = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Release held text at the end of the stream (it did not turn into a stop string)."""
        out, self._buf = ("" if self._stopped else self._buf), ""
        return out

    def _holdback(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best
