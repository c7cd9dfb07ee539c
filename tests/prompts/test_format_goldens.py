"""Golden round trips per model family: its published template writes an answer, corral parses it back.

For each family the template (Ollama's library Go template, or the model's own GGUF Jinja template;
sources in data/*/README.md) renders a conversation whose assistant turn holds the answer: the text
that template writes for that turn is exactly what the model is trained to produce. Fed to the
parser the prompt plan picks for that model, whole and split at every position, it must give the
answer back: reasoning, content and tool calls. The prompt itself is checked where it ends (the
generation prompt the parser starts from).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from corral.conversation import Message, Tool, ToolCall
from corral.jobs import ChatJob
from corral.prompts import PromptPlan, plan_chat
from corral.prompts.formats import new_parser

from .conftest import go_template, jinja_template, make_spec
from .formatcheck import parse_every_way

WEATHER = Tool(name="get_weather", description="Get the weather", parameters={
    "type": "object", "required": ["city"],
    "properties": {"city": {"type": "string", "description": "City"},
                   "days": {"type": "integer", "description": "Days ahead"}}})
USER = Message(role="user", content="Weather in Oslo?")
CALL = ToolCall(name="get_weather", arguments={"city": "Oslo", "days": 2}, id="call_1")
TOOL_TURN = Message(role="assistant", thinking="Need the tool.", tool_calls=[CALL])
TOOL_RESULT = Message(role="tool", content="12C", tool_name="get_weather", tool_call_id="call_1")
TEXT_TURN = Message(role="assistant", content="It is 12C in Oslo.")
THANKS = Message(role="user", content="Thanks")
EXPECTED_CALL = [("get_weather", {"city": "Oslo", "days": 2})]


@dataclass
class Golden:
    family: str  # the output format the model must be recognised as
    source: tuple[str, str]  # ("go" | "jinja", data file name)
    answer: Message
    end: str  # what the template writes after the answer (the token that ends the turn)
    expected: tuple[str, str, list[Any]]  # (content, reasoning, calls) the parser gives back
    prompt_end: str  # how the generation prompt ends
    think: bool | str | None = None
    parser: str | None = None  # the model's PARSER, if it names one
    markers: tuple[str, ...] = field(default_factory=tuple)
    # where the history's assistant turn starts, when its header differs from the generation prompt
    header: str = ""
    tools: bool = True  # the request offers the weather tool (templates without tools get none)

    @property
    def follow(self) -> list[Message]:
        return [TOOL_RESULT] if self.answer.tool_calls else [THANKS]

    @property
    def id(self) -> str:
        kind = "tools" if self.answer.tool_calls else "text"
        return f"{self.source[1]}-{kind}-think={self.think}"


COHERE_PROMPT_END = "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
HARMONY = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>")
CASES = [
    # gpt-oss: Ollama's library template and the GGUF's own; reasoning on analysis, calls on commentary
    Golden("harmony", ("go", "gpt-oss"), TOOL_TURN, "<|call|>", ("", "Need the tool.", EXPECTED_CALL),
           "<|start|>assistant", think="high", markers=HARMONY),
    Golden("harmony", ("go", "gpt-oss"), TEXT_TURN, "<|end|>", ("It is 12C in Oslo.", "", []),
           "<|start|>assistant", markers=HARMONY),
    Golden("harmony", ("jinja", "openai-gpt-oss-120b"), TOOL_TURN, "<|call|>",
           ("", "Need the tool.", EXPECTED_CALL), "<|start|>assistant", think="low", markers=HARMONY),
    Golden("harmony", ("jinja", "openai-gpt-oss-120b"), TEXT_TURN, "<|end|>", ("It is 12C in Oslo.", "", []),
           "<|start|>assistant", markers=HARMONY),
    # Qwen3-Coder: XML calls
    Golden("qwen3-coder", ("jinja", "Qwen3-Coder"), TOOL_TURN, "<|im_end|>", ("", "", EXPECTED_CALL),
           "<|im_start|>assistant\n", markers=("<tool_call>", "</tool_call>")),
    Golden("qwen3-coder", ("jinja", "Qwen3-Coder"),
           Message(role="assistant", content="Let me check.", tool_calls=[CALL]), "<|im_end|>",
           ("Let me check.\n", "", EXPECTED_CALL), "<|im_start|>assistant\n", markers=("<tool_call>",)),
    Golden("qwen3-coder", ("jinja", "Qwen3-Coder"), TEXT_TURN, "<|im_end|>", ("It is 12C in Oslo.", "", []),
           "<|im_start|>assistant\n"),
    # DeepSeek V3.1: tool-call tokens; reasoning opened by the prompt when thinking is on
    Golden("deepseek", ("jinja", "deepseek-ai-DeepSeek-V3.1"), TOOL_TURN, "<｜end▁of▁sentence｜>",
           ("", "", EXPECTED_CALL), "<｜Assistant｜><think>", think=True,
           markers=("<think>", "</think>", "<｜tool▁calls▁begin｜>")),
    Golden("deepseek", ("jinja", "deepseek-ai-DeepSeek-V3.1"), TOOL_TURN, "<｜end▁of▁sentence｜>",
           ("", "", EXPECTED_CALL), "<｜Assistant｜><think></think>", think=False),
    Golden("deepseek", ("jinja", "deepseek-ai-DeepSeek-V3.1"), TEXT_TURN, "<｜end▁of▁sentence｜>",
           ("It is 12C in Oslo.", "", []), "<｜Assistant｜><think>", think=True),
    # DeepSeek R1: fenced JSON calls after the same tokens; Ollama's template for its reasoning
    Golden("deepseek", ("jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"), TOOL_TURN,
           "<｜end▁of▁sentence｜>", ("", "", EXPECTED_CALL), "<｜Assistant｜><think>\n",
           markers=("<｜tool▁calls▁begin｜>",), header="<｜Assistant｜>"),
    Golden("generic", ("go", "deepseek-r1"), TEXT_TURN, "<｜end▁of▁sentence｜>",
           ("It is 12C in Oslo.", "", []), "<｜Assistant｜>", think=True, tools=False),
    # GLM-4.5/4.6 and 4.7: <arg_key>/<arg_value> calls
    Golden("glm", ("jinja", "GLM-4.6"), TOOL_TURN, "<|observation|>", ("", "Need the tool.", EXPECTED_CALL),
           "<|assistant|>", think=True, markers=("<think>", "</think>", "<tool_call>", "</tool_call>")),
    Golden("glm", ("jinja", "GLM-4.6"), TEXT_TURN, "<|user|>", ("It is 12C in Oslo.", "", []),
           "<|assistant|>", think=True),
    Golden("glm", ("jinja", "GLM-4.7-Flash"), TOOL_TURN, "<|observation|>",
           ("", "Need the tool.", EXPECTED_CALL), "<|assistant|><think>", think=True,
           markers=("</think>", "<tool_call>")),
    # Kimi K2: section and call tokens, the model's own call ids
    Golden("kimi-k2", ("jinja", "Kimi-K2-Instruct"), TOOL_TURN, "<|im_end|>", ("", "", EXPECTED_CALL),
           "<|im_assistant|>assistant<|im_middle|>", markers=("<|tool_calls_section_begin|>",)),
    Golden("kimi-k2", ("jinja", "Kimi-K2-Thinking"), TOOL_TURN, "<|im_end|>",
           ("", "Need the tool.", EXPECTED_CALL), "<|im_assistant|>assistant<|im_middle|>", think=True,
           markers=("<think>", "</think>")),
    Golden("kimi-k2", ("jinja", "Kimi-K2-Instruct"), TEXT_TURN, "<|im_end|>", ("It is 12C in Oslo.", "", []),
           "<|im_assistant|>assistant<|im_middle|>"),
    # Command-R (Ollama's template and R+'s own) and R7B
    Golden("command-r", ("go", "command-r"), TOOL_TURN, "<|END_OF_TURN_TOKEN|>", ("", "", EXPECTED_CALL),
           COHERE_PROMPT_END, markers=("Action:",), header="<|CHATBOT_TOKEN|>"),
    # (R+'s template writes no end-of-turn after an action: the tool results' turn follows at once)
    Golden("command-r", ("jinja", "CohereForAI-c4ai-command-r-plus-tool_use"), TOOL_TURN,
           "<|START_OF_TURN_TOKEN|>", ("", "", EXPECTED_CALL), COHERE_PROMPT_END, markers=("Action:",),
           header="<|CHATBOT_TOKEN|>"),
    Golden("command-r", ("go", "command-r"), TEXT_TURN, "<|END_OF_TURN_TOKEN|>",
           ("It is 12C in Oslo.", "", []), COHERE_PROMPT_END, header="<|CHATBOT_TOKEN|>"),
    Golden("command-r7b", ("jinja", "CohereForAI-c4ai-command-r7b-12-2024-tool_use"), TOOL_TURN,
           "<|END_OF_TURN_TOKEN|>", ("", "Need the tool.", EXPECTED_CALL), COHERE_PROMPT_END,
           think=True, markers=("<|START_ACTION|>", "<|END_ACTION|>")),
    Golden("command-r7b", ("jinja", "CohereForAI-c4ai-command-r7b-12-2024-tool_use"), TEXT_TURN,
           "<|END_OF_TURN_TOKEN|>", ("It is 12C in Oslo.", "", []), COHERE_PROMPT_END,
           think=True, markers=("<|START_RESPONSE|>", "<|END_RESPONSE|>")),
]


def plan(case: Golden, messages: list[Message]) -> PromptPlan:
    kind, name = case.source
    spec = make_spec(template=go_template(name) if kind == "go" else None, parser=case.parser or "")
    job = ChatJob(model="x", messages=messages, tools=[WEATHER] if case.tools else [], think=case.think)
    return plan_chat(spec, job, gguf_template=jinja_template(name) if kind == "jinja" else None,
                     bos_token="<s>", eos_token="</s>")


def written_answer(case: Golden) -> tuple[PromptPlan, str]:
    """The generation prompt's plan, and the text the template writes for the assistant turn."""
    prompt = plan(case, [USER])
    history = plan(case, [USER, case.answer, *case.follow]).text
    start = len(os.path.commonprefix([prompt.text, history]))
    if case.header:
        # the last header that starts before the texts differ, else the first one after
        at = history.rfind(case.header, 0, start + len(case.header))
        start = (at if at >= 0 else history.index(case.header, start)) + len(case.header)
    end = history.find(case.end, start)
    assert end >= 0, f"{case.end!r} does not end the answer in {history[start:]!r}"
    return prompt, history[start:end]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_template_writes_what_the_parser_reads(case: Golden) -> None:
    prompt, answer = written_answer(case)
    assert prompt.format.name == case.family
    assert prompt.text.endswith(case.prompt_end), prompt.text[-200:]
    assert case.end not in prompt.stop or case.end != "<|end|>"  # harmony's messages end in <|end|>
    content, thinking, calls = parse_every_way(prompt.new_parser, answer, case.markers)
    want_content, want_thinking, want_calls = case.expected
    got = (content.strip(), thinking.strip(), calls)
    assert got == (want_content.strip(), want_thinking, want_calls), answer


def test_every_family_is_covered() -> None:
    from corral.prompts.formats import FORMATS

    assert {c.family for c in CASES} | {"passthrough"} == set(FORMATS)


def test_harmony_reasoning_effort_reaches_both_templates() -> None:
    for kind, name in (("go", "gpt-oss"), ("jinja", "openai-gpt-oss-120b")):
        for level in ("low", "medium", "high"):
            case = Golden("harmony", (kind, name), TEXT_TURN, "", ("", "", []), "", think=level)
            assert f"Reasoning: {level}" in plan(case, [USER]).text
        # compat(ollama): "max" is harmony's high
        case = Golden("harmony", (kind, name), TEXT_TURN, "", ("", "", []), "", think="max")
        assert "Reasoning: high" in plan(case, [USER]).text


def test_harmony_tool_names_reach_the_template_as_identifiers() -> None:
    dashed = Tool(name="get-weather", description="Get the weather", parameters=WEATHER.parameters)
    spec = make_spec(template=go_template("gpt-oss"))
    call = ToolCall(name="get-weather", arguments={"city": "Oslo"}, id="call_1")
    msgs = [USER, Message(role="assistant", tool_calls=[call]),
            Message(role="tool", content="12C", tool_name="get-weather")]
    p = plan_chat(spec, ChatJob(model="x", messages=msgs, tools=[dashed]), gguf_template=None,
                  bos_token="", eos_token="")
    assert "type get_weather = (_: {" in p.text
    assert "to=functions.get_weather <|constrain|>json" in p.text
    assert "<|start|>functions.get_weather to=assistant<|message|>12C" in p.text
    parser = new_parser(p.format, tools=[dashed], think=True, starts_thinking=False, prompt=p.text)
    assert parser is not None
    out = parser.feed("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
                      '{"city": "X"}')
    out.tool_calls += parser.finish().tool_calls
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("get-weather", {"city": "X"})]


def test_structured_output_on_harmony_answers_on_the_final_channel() -> None:
    spec = make_spec(template=go_template("gpt-oss"))
    p = plan_chat(spec, ChatJob(model="x", messages=[USER], format="json"), gguf_template=None,
                  bos_token="", eos_token="")
    assert p.text.endswith("<|start|>assistant<|channel|>final<|message|>")
    parser = p.new_parser()
    out = parser.feed('{"a": 1}')
    assert out.content + parser.finish().content == '{"a": 1}'
