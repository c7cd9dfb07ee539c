"""Built-in renderers (Modelfile RENDERER) write what the family's published Jinja template writes."""

from __future__ import annotations

import pytest

from corral.conversation import Message, Tool, ToolCall
from corral.jobs import ChatJob
from corral.prompts import plan_chat
from corral.prompts.renderers import RENDERERS

from .conftest import jinja_template, make_spec

WEATHER = Tool(name="get_weather", description=" Get the weather ", parameters={
    "type": "object", "required": ["city"],
    "properties": {"city": {"type": "string", "description": "City"},
                   "days": {"type": "integer", "description": "Days ahead", "minimum": 0},
                   "units": {"type": "string", "enum": ["c", "f"]}}})
CALL = ToolCall(name="get_weather", id="call_1",
                arguments={"city": "Oslo", "days": 2, "opts": {"a": [1, True]}, "x": None})
CONVERSATIONS = {
    "one-turn": [Message(role="user", content="Hi")],
    "system": [Message(role="system", content="Be brief."), Message(role="user", content="Hi")],
    "history": [Message(role="user", content="Hi"), Message(role="assistant", content="Hello!"),
                Message(role="user", content="How are you?")],
    "tool-round-trip": [
        Message(role="system", content="Use tools."), Message(role="user", content="Weather in Oslo?"),
        Message(role="assistant", content="Let me look.", tool_calls=[CALL, CALL]),
        Message(role="tool", content="12C", tool_name="get_weather"),
        Message(role="tool", content="13C", tool_name="get_weather"),
        Message(role="assistant", content="12C today."), Message(role="user", content="Thanks")],
    "after-tool": [Message(role="user", content="Weather?"),
                   Message(role="assistant", thinking="I should look it up.", tool_calls=[CALL]),
                   Message(role="tool", content="12C", tool_name="get_weather")],
    "echoed-reasoning": [Message(role="user", content="Hi"),
                         Message(role="assistant", content="<think>\nhmm\n</think>\n\nHello!"),
                         Message(role="user", content="Again")],
    "prefill": [Message(role="user", content="Hi"), Message(role="assistant", content="Well,")],
}
JINJA = {"qwen3-coder": "Qwen3-Coder", "deepseek3.1": "deepseek-ai-DeepSeek-V3.1", "glm-4.7": "GLM-4.7-Flash"}
PARSER = {"qwen3-coder": "qwen3-coder", "deepseek3.1": "deepseek3", "glm-4.7": "glm-4.7"}  # Ollama's pairs


def rendered(messages: list[Message], tools: list[Tool], think: bool | None, *, renderer: str = "",
             parser: str = "", jinja: str | None = None) -> str:
    spec = make_spec(renderer=renderer, parser=parser)
    job = ChatJob(model="x", messages=messages, tools=tools, think=think)
    return plan_chat(spec, job, gguf_template=jinja_template(jinja) if jinja else None, bos_token="<bos>",
                     eos_token="</s>").text


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("tools", [False, True], ids=["no-tools", "tools"])
@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_renderer_matches_the_published_template(name: str, conversation: str, tools: bool) -> None:
    msgs = CONVERSATIONS[conversation]
    offered = [WEATHER] if tools else []
    for think in ((None,) if name == "qwen3-coder" else (None, True, False)):
        ours = rendered(msgs, offered, think, renderer=name, parser=PARSER[name])
        assert ours == rendered(msgs, offered, think, jinja=JINJA[name]), (name, think)


def test_every_renderer_has_its_template() -> None:
    assert set(JINJA) == set(RENDERERS)


def test_the_renderer_beats_the_template() -> None:
    # compat(ollama): a model with a RENDERER is rendered by it, whatever TEMPLATE or GGUF template it has
    spec = make_spec(template="{{ .Prompt }}", renderer="qwen3-coder", parser="qwen3-coder")
    text = plan_chat(spec, ChatJob(model="x", messages=[Message(role="user", content="Hi")]),
                     gguf_template="{{ nonsense }}", bos_token="", eos_token="").text
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
