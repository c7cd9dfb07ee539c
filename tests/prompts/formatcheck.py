"""Test helper: run a streaming parser over an answer whole, char by char and split at every position."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.prompts.formats import ParsedDelta, StreamParser

Result = tuple[str, str, list[tuple[str, dict[str, Any]]]]


def collect(parser: StreamParser, pieces: list[str]) -> tuple[Result, list[ParsedDelta]]:
    deltas = [parser.feed(p) for p in pieces] + [parser.finish()]
    content = "".join(d.content for d in deltas)
    thinking = "".join(d.thinking for d in deltas)
    calls = [(c.name, c.arguments) for d in deltas for c in d.tool_calls]
    return (content, thinking, calls), deltas


def parse_every_way(make: Callable[[], StreamParser], text: str, markers: tuple[str, ...] = ()) -> Result:
    """The parse of `text`, checked to be the same whole, char by char and at every split point.

    No delta may end in the middle of one of `markers` unless the answer really has that text there.
    """
    whole, _ = collect(make(), [text])
    by_char, deltas = collect(make(), list(text))
    assert by_char == whole, f"char by char: {by_char!r} != {whole!r}"
    for i in range(1, len(text)):
        split, _ = collect(make(), [text[:i], text[i:]])
        assert split == whole, f"split at {i} ({text[:i]!r}|{text[i:]!r}): {split!r} != {whole!r}"
    bare = text
    for m in markers:
        bare = bare.replace(m, "")
    for d in deltas:
        for piece in (d.content, d.thinking):
            for m in markers:
                for n in range(1, len(m)):
                    if piece.endswith(m[:n]) and m[:n] not in bare:
                        raise AssertionError(f"partial marker {m[:n]!r} in {piece!r}")
    ids = [c.id for d in deltas for c in d.tool_calls]
    assert len(set(ids)) == len(ids), "tool call ids repeat"
    indexes = [c.index for d in deltas for c in d.tool_calls]
    assert indexes == list(range(len(indexes))), "tool call indexes are not 0, 1, 2..."
    return whole
