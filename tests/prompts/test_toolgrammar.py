"""tool_choice required / a named tool: the grammar forces exactly one call, in the template's own syntax,
that the output parser reads back as that call; llama.cpp's GBNF parser accepts every form of it."""

from __future__ import annotations

import pytest

from corral.conversation import Tool
from corral.errors import InvalidRequestError
from corral.prompts.outparse import OutputParser
from corral.prompts.toolgrammar import tool_call_grammar
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec
from corral.testing.gbnf import sample_grammar
from corral.types import CancelToken, GenerationRequest, SamplingParams

__all__ = ["tiny_gguf", "tiny_gguf_spec"]
TOOLS = [
    Tool(
        name="get_weather",
        parameters={
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "maxLength": 12}},
        },
    ),
    Tool(name="get_time", parameters={"type": "object", "properties": {}, "additionalProperties": False}),
    # $defs and $ref inside one tool's schema still resolve once the schemas are combined
    Tool(
        name="move",
        parameters={
            "type": "object",
            "required": ["to"],
            "$defs": {"pos": {"type": "integer", "minimum": 0, "maximum": 9}},
            "properties": {"to": {"$ref": "#/$defs/pos"}},
        },
    ),
]
TAGS = ["<tool_call>", "{", "[TOOL_CALLS]", "<|python_tag|>"]


def _parse(text: str, tag: str) -> list[str]:
    parser = OutputParser(tools=TOOLS, tool_tag=tag)
    delta = parser.feed(text)
    tail = parser.finish()
    assert not (delta.content + tail.content).strip(), text
    return [c.name for c in delta.tool_calls + tail.tool_calls]


@pytest.mark.parametrize("tag", TAGS)
def test_every_sample_is_one_parsed_call(tag: str) -> None:
    grammar = tool_call_grammar(TOOLS, tag)
    for seed in range(12):
        names = _parse(sample_grammar(grammar, seed=seed), tag)
        assert len(names) == 1 and names[0] in {t.name for t in TOOLS}
    forced = tool_call_grammar(TOOLS, tag, only="get_time")
    assert all(_parse(sample_grammar(forced, seed=s), tag) == ["get_time"] for s in range(6))


def test_clear_errors() -> None:
    with pytest.raises(InvalidRequestError, match="no tools"):
        tool_call_grammar([], "{")
    with pytest.raises(InvalidRequestError, match="not among"):
        tool_call_grammar(TOOLS, "{", only="absent")


@pytest.mark.parametrize("tag", TAGS)
def test_llama_cpp_generates_a_parsable_call(tiny_hooks, tag: str) -> None:
    hooks, handle = tiny_hooks
    request = GenerationRequest(
        prompt=hooks.tokenize(handle, "call a tool"),
        num_predict=200,
        sampling=SamplingParams(temperature=0.0, grammar=tool_call_grammar(TOOLS, tag)),
    )
    events = list(hooks.generate(handle, request, CancelToken()))
    text = "".join(e.text for e in events)
    assert events[-1].finish_reason == "stop", text  # the grammar ended the answer, not the cap
    assert len(_parse(text, tag)) == 1


@pytest.mark.parametrize("tag", TAGS)
def test_llguidance_calls_are_the_gbnf_calls(tiny_hooks, tag: str) -> None:
    """With the call's schema form (llguidance) greedy decoding gives the GBNF sampler's tokens."""
    from corral.prompts.toolgrammar import tool_call_constraint

    hooks, handle = tiny_hooks
    prompt = hooks.tokenize(handle, "call a tool")
    out = []
    for schema in (None, tool_call_constraint(TOOLS, tag, only="move")):
        sampling = SamplingParams(temperature=0.0, grammar=tool_call_grammar(TOOLS, tag, only="move"),
                                  json_schema=schema)
        request = GenerationRequest(prompt=prompt, num_predict=200, sampling=sampling)
        events = list(hooks.generate(handle, request, CancelToken()))
        assert events[-1].finish_reason == "stop"
        out.append([e.token for e in events if e.token >= 0])
    assert out[0] == out[1] and out[0]
