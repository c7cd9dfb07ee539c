"""A lazy tool-call constraint (strict tools, tool_choice auto): free text stays the model's own, and
once the call's opener appears the call fits the tools' schemas, on both of llama.cpp's paths."""

from __future__ import annotations

import json
import re

import pytest

from corral.conversation import Tool
from corral.lazycall import CallWatch
from corral.prompts.toolgrammar import tool_call_constraint, tool_call_grammar
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec
from corral.testing.gbnf import constrain_calls, matches
from corral.types import CancelToken, GenerationRequest, JsonConstraint, SamplingParams

__all__ = ["tiny_gguf", "tiny_gguf_spec"]
_CLOSED = {"type": "object", "additionalProperties": False}
TOOLS = [
    Tool(name="get_weather", parameters={**_CLOSED, "required": ["city"],
                                         "properties": {"city": {"type": "string", "maxLength": 12}}}),
    Tool(name="move", parameters={**_CLOSED, "required": ["to"],
                                  "properties": {"to": {"type": "integer", "minimum": 0, "maximum": 9}}}),
]
THINK = ("<think>", "</think>")


def _feed(watch: CallWatch, *pieces: str) -> list[str | None]:
    return [watch.feed(p.encode()) for p in pieces]


def test_the_watch_finds_an_opener_split_across_tokens() -> None:
    watch = CallWatch(JsonConstraint(schema="{}", opener="<tool_call>", lazy=True))
    assert _feed(watch, "Sure. <tool", "_ca", "ll>\n{") == [None, None, '\n{']
    assert _feed(watch, '"name"') == [None]  # one call at a time until rearmed
    watch.rearm()
    assert _feed(watch, " then <tool_call>") == [""]


def test_the_watch_ignores_openers_inside_reasoning() -> None:
    c = JsonConstraint(schema="{}", opener="<tool_call>", think_markers=THINK, lazy=True)
    watch = CallWatch(c)
    assert _feed(watch, "<think>maybe <tool_call> here", "</think> ok", "<tool_call>{") == [None, None, "{"]
    inside = CallWatch(JsonConstraint(schema="{}", opener="<tool_call>", think_markers=THINK,
                                      think_inside=True, lazy=True))
    assert _feed(inside, "<tool_call>", "</think>", "<tool_call>") == [None, None, ""]


def test_a_bare_json_call_opens_only_the_answer() -> None:
    watch = CallWatch(JsonConstraint(schema="{}", lazy=True))
    assert _feed(watch, "  ", ' {"na') == [None, '{"na']
    prose = CallWatch(JsonConstraint(schema="{}", lazy=True))
    assert _feed(prose, "Use ", '{"a": 1}') == [None, None]
    probe = CallWatch(JsonConstraint(schema="{}", lazy=True))
    assert probe.probe(b"{") == "{" and probe.feed(b"{") == "{"  # probing changed nothing


def test_the_fake_backend_keeps_free_text_and_fixes_calls() -> None:
    grammar = tool_call_grammar(TOOLS, "<tool_call>", lazy=True)
    good = 'a <tool_call>\n{"name": "move", "arguments": {"to": 3}}</tool_call> b'
    assert constrain_calls(good, "<tool_call>", "</tool_call>", grammar) == good
    bad = 'a <tool_call>{"name": "move", "arguments": {"to": 30}}</tool_call> b <tool_call>{"x": 1}'
    out = constrain_calls(bad, "<tool_call>", "</tool_call>", grammar)
    calls = re.findall(r"<tool_call>(.*?)(?=</tool_call>| b |$)", out, flags=re.S)
    assert out.startswith("a <tool_call>") and " b <tool_call>" in out and len(calls) == 2
    assert all(matches(grammar, c + "</tool_call>") for c in calls), out


def _valid(call: dict) -> bool:
    args = call.get("arguments")
    if set(call) != {"name", "arguments"} or not isinstance(args, dict):
        return False
    if call["name"] == "get_weather":  # 12 characters; a random model's broken UTF-8 shows byte by byte
        return set(args) == {"city"} and isinstance(args["city"], str) and len(args["city"]) <= 4 * 12
    return call["name"] == "move" and set(args) == {"to"} and type(args["to"]) is int and 0 <= args["to"] <= 9


@pytest.mark.parametrize("path", ["llguidance", "gbnf"])
def test_free_text_is_free_and_calls_fit_their_schema(tiny_hooks, monkeypatch, path: str) -> None:
    hooks, handle = tiny_hooks
    if path == "gbnf":  # as on a machine without llguidance: llama.cpp's grammar sampler, armed lazily
        monkeypatch.setattr("corral_plugins._llama.guidance.llg", None)
    prompt = hooks.tokenize(handle, "call a tool")

    def run(sampling: SamplingParams) -> tuple[str, list[int]]:
        request = GenerationRequest(prompt=prompt, num_predict=160, sampling=sampling)
        events = list(hooks.generate(handle, request, CancelToken()))
        return "".join(e.text for e in events), [e.token for e in events if e.token >= 0]

    free, tokens = run(SamplingParams(temperature=0.0))
    # openers the model writes anyway (a word ending where one of its tokens ends), so that it calls
    heads = [hooks.detokenize(handle, tokens[:i]) for i in range(2, 40)]
    openers = list(dict.fromkeys(m.group(0) for h in heads if (m := re.search(r"[A-Za-z]{3}$", h))))[:3]
    assert openers, free
    for opener in openers:
        sampling = SamplingParams(temperature=0.0, grammar=tool_call_grammar(TOOLS, opener, lazy=True),
                                  json_schema=tool_call_constraint(TOOLS, opener, lazy=True))
        text, _ = run(sampling)
        head = free[: free.index(opener) + len(opener)]
        assert text.startswith(head), (opener, free, text)  # untouched up to the opener
        rest, n = text[len(head):], 0
        while True:  # every call fits; the text after a call is free again, and re-armed
            body = rest.lstrip()
            try:
                call, used = json.JSONDecoder().raw_decode(body)
            except ValueError:
                assert n and len(body) < 200, (opener, text)  # only a call cut off by num_predict
                break
            assert _valid(call), (opener, call)
            n += 1
            rest = body[used:]
            if opener not in rest:
                break
            rest = rest[rest.index(opener) + len(opener):]
        assert n >= 1
