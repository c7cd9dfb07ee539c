"""The streaming output parser: thinking and tool calls split out whole, however the text is chunked."""

from __future__ import annotations

import random
import re

import pytest

from corral.conversation import Tool
from corral.prompts import OutputParser, ParsedDelta

from .conftest import WEATHER

TIME = Tool(name="get_time", parameters={"type": "object", "properties": {}})
MARKERS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>"]


def run(text: str, chunks: list[int] | None = None, **kw) -> tuple[str, str, list, list[ParsedDelta]]:
    p = OutputParser(**kw)
    deltas: list[ParsedDelta] = []
    pos = 0
    for n in chunks or [1] * len(text):
        deltas.append(p.feed(text[pos:pos + n]))
        pos += n
    if pos < len(text):
        deltas.append(p.feed(text[pos:]))
    deltas.append(p.finish())
    content = "".join(d.content for d in deltas)
    thinking = "".join(d.thinking for d in deltas)
    calls = [c for d in deltas for c in d.tool_calls]
    return content, thinking, calls, deltas


def assert_no_partial_markers(deltas: list[ParsedDelta], text: str) -> None:
    for d in deltas:
        for piece in (d.content, d.thinking):
            for m in MARKERS:
                for n in range(1, len(m)):
                    # a delta may end with a marker prefix only if the original text really had it there
                    if piece.endswith(m[:n]) and m[:n] not in text.replace(m, ""):
                        raise AssertionError(f"partial marker {m[:n]!r} in {piece!r}")


THINK = {"think_markers": ("<think>", "</think>")}


def test_thinking_is_split_char_by_char() -> None:
    text = "<think>Let me see.\nOK</think>\n\nThe answer is 4."
    content, thinking, _, deltas = run(text, **THINK)
    assert (thinking, content) == ("Let me see.\nOK", "The answer is 4.")
    assert_no_partial_markers(deltas, text)


def test_output_that_starts_inside_the_think_block() -> None:
    content, thinking, _, _ = run("hmm, 2+2</think>4", starts_thinking=True, **THINK)
    assert (thinking, content) == ("hmm, 2+2", "4")


def test_no_think_block_is_all_content() -> None:
    assert run("just <b>an</b> answer <think>", **THINK)[:2] == ("just <b>an</b> answer <think>", "")
    assert run("<thinking is fun", **THINK)[:2] == ("<thinking is fun", "")


def test_thinking_disabled_passes_markers_through() -> None:
    assert run("<think>x</think>y")[:2] == ("<think>x</think>y", "")


def test_custom_markers() -> None:
    content, thinking, _, _ = run("[THINK]plan[/THINK]done", think_markers=("[THINK]", "[/THINK]"))
    assert (thinking, content) == ("plan", "done")


def test_unfinished_thinking_is_flushed_at_the_end() -> None:
    assert run("<think>still going", **THINK)[:2] == ("", "still going")


TOOLS = {"tools": [WEATHER, TIME]}


@pytest.mark.parametrize(("text", "tag", "before"), [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "<tool_call>", ""),
    ('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "<tool_call>", "Sure.\n"),
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "{", ""),
    ('  {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', "<tool_call>", "  "),
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', "[TOOL_CALLS]", ""),
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "[TOOL_CALLS]", ""),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>', "{", ""),
    ('{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}', "{", ""),
])
def test_tool_call_formats(text: str, tag: str, before: str) -> None:
    content, _, calls, deltas = run(text, tool_tag=tag, **TOOLS)
    assert content == before
    assert [(c.name, c.arguments, c.index) for c in calls] == [("get_weather", {"city": "Paris"}, 0)]
    assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0].id)
    assert sum(1 for d in deltas if d.tool_calls) == 1  # emitted once, whole
    assert_no_partial_markers(deltas, text)


def test_several_calls_get_indexes_and_distinct_ids() -> None:
    text = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "A"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    content, _, calls, _ = run(text, tool_tag="<tool_call>", **TOOLS)
    assert [(c.name, c.index) for c in calls] == [("get_weather", 0), ("get_time", 1)]
    assert calls[0].id != calls[1].id and content.strip() == ""
    text = ('[TOOL_CALLS] [{"name": "get_time", "arguments": {}}, '
            '{"name": "get_weather", "arguments": {"city": "B"}}]')
    assert [c.name for c in run(text, tool_tag="[TOOL_CALLS]", **TOOLS)[2]] == ["get_time", "get_weather"]


@pytest.mark.parametrize("text", [
    '{"answer": 42}',  # JSON that is not a call
    '<tool_call>{"name": "launch_missiles", "arguments": {}}</tool_call>',  # unknown tool
    "<tool_call> I changed my mind",  # not JSON
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Par',  # cut off by the token limit
    "Use {braces} freely",
    "[TOOL_CALLS] nothing",
])
def test_text_that_is_not_a_call_comes_back_as_content(text: str) -> None:
    content, _, calls, _ = run(text, tool_tag="<tool_call>", **TOOLS)
    assert calls == [] and content == text


def test_bare_json_only_opens_a_call_at_the_start_unless_the_template_says_so() -> None:
    text = 'Here: {"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert run(text, tool_tag="<tool_call>", **TOOLS)[2] == []
    assert len(run(text, tool_tag="{", **TOOLS)[2]) == 1


def test_thinking_then_a_tool_call() -> None:
    text = ('<think>need weather</think>\n<tool_call>\n'
            '{"name": "get_weather", "arguments": {"city": "X"}}\n</tool_call>')
    content, thinking, calls, _ = run(text, tool_tag="<tool_call>", **THINK, **TOOLS)
    assert thinking == "need weather" and content == "" and calls[0].arguments == {"city": "X"}


@pytest.mark.parametrize("seed", range(12))
def test_any_chunking_gives_the_same_result(seed: int) -> None:
    text = ('<think>a < b and </thi not yet</think>Answer with <tool and {x}.\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "}{\\"<tool_call>"}}\n'
            '</tool_call> bye')
    rng = random.Random(seed)
    chunks = [rng.randint(1, 7) for _ in range(len(text))]
    whole = run(text, [len(text)], tool_tag="<tool_call>", **THINK, **TOOLS)
    split = run(text, chunks, tool_tag="<tool_call>", **THINK, **TOOLS)
    assert whole[:2] == split[:2] == ("Answer with <tool and {x}.\n bye", "a < b and </thi not yet")
    assert [c.arguments for c in whole[2]] == [c.arguments for c in split[2]] == [{"city": '}{"<tool_call>'}]
    assert_no_partial_markers(split[3], text)


def test_an_unclosed_tool_call_is_scanned_in_linear_time() -> None:
    # issue 10: the payload was rescanned from its start on every token (quadratic: 565 s of server CPU
    # for 40,000 tokens of a call that never closes); each token now scans only its own text
    import time

    from corral.conversation import Tool
    from corral.prompts.outparse import OutputParser

    p = OutputParser(tools=[Tool(name="get_weather", parameters={"type": "object"})], tool_tag="<tool_call>")
    p.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "')
    t0 = time.monotonic()
    for _ in range(40_000):
        assert not p.feed("word ").tool_calls
    assert time.monotonic() - t0 < 30  # linear: ~1 s; the quadratic scan took minutes
    assert "word word" in p.finish().content  # never closed: released as text at the end
