"""Each model family's output parser on answers as the models write them, whole and split at every position.

The answers follow llama.cpp's own parser tests at the pin (tests/test-chat.cpp) and Ollama's parsers
(model/parsers, harmony/harmonyparser.go); the expectations are the split they define.
"""

from __future__ import annotations

import pytest

from corral.conversation import Tool
from corral.prompts.formats import OutputFormat, new_parser, select
from corral.prompts.formats.harmony import ToolNames

from .formatcheck import parse_every_way

SPECIAL = Tool(name="special_function", parameters={
    "type": "object", "properties": {"arg1": {"type": "integer"}}, "required": ["arg1"]})
WITH_OPT = Tool(name="special_function_with_opt", parameters={
    "type": "object", "properties": {"arg1": {"type": "integer"}, "arg2": {"type": "integer"}}})
WEATHER = Tool(name="get_weather", parameters={
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                     "metric": {"type": "boolean"}, "tags": {"type": "array"}}})
TOOLS = [SPECIAL, WITH_OPT, WEATHER]
HELLO = "Hello, world!\nWhat's up?"


def parse(name: str, text: str, *, tools: list[Tool] | None = None, think: bool = True,
          starts_thinking: bool = False, prompt: str = "") -> tuple:
    fmt = select(name, "", None, False, "{")
    markers = tuple(m for m in MARKERS.get(name, ()))
    return parse_every_way(
        lambda: new_parser(fmt, tools=TOOLS if tools is None else tools, think=think,
                           starts_thinking=starts_thinking, prompt=prompt),
        text, markers)


MARKERS = {
    "harmony": ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>"),
    "qwen3-coder": ("<tool_call>", "</tool_call>", "<function=special_function>", "<think>", "</think>"),
    "glm-4.6": ("<tool_call>", "</tool_call>", "<think>", "</think>"),
    "deepseek3": ("<think>", "</think>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"),
    "kimi-k2-thinking": ("<think>", "</think>", "<|tool_calls_section_begin|>", "<|tool_call_begin|>"),
    "command-r7b": ("<|START_THINKING|>", "<|END_THINKING|>", "<|START_ACTION|>", "<|START_RESPONSE|>",
                    "<|END_RESPONSE|>"),
    "command-r": ("Action:",),
}
CALL1 = [("special_function", {"arg1": 1})]


# ---- harmony (gpt-oss) -----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("<|channel|>final<|message|>" + HELLO, (HELLO, "", [])),
    ("<|channel|>commentary<|message|>" + HELLO, (HELLO, "", [])),  # a preamble to the user is content
    ("<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final<|message|>"
     + HELLO, (HELLO, "I'm\nthinking", [])),
    ("<|channel|>analysis<|message|>I'm\nthinking", ("", "I'm\nthinking", [])),
    (' to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}', ("", "", CALL1)),
    ('<|channel|>analysis to=functions.special_function<|message|>{"arg1": 1}', ("", "", CALL1)),
    (' to=functions.special_function<|channel|>analysis <|constrain|>json<|message|>{"arg1": 1}',
     ("", "", CALL1)),
    ('<|channel|>commentary to=functions.special_function<|message|>{"arg1": 1}', ("", "", CALL1)),
    ("<|channel|>analysis<|message|>I'm\nthinking<|end|>"
     '<|start|>assistant to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}',
     ("", "I'm\nthinking", CALL1)),
    ("<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
     'to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}',
     ("", "Need weather.", [("get_weather", {"city": "Oslo"})])),
    # two calls in one answer, each its own message
    ('<|channel|>commentary to=functions.special_function <|constrain|>json<|message|>{"arg1": 1}<|end|>'
     '<|start|>assistant<|channel|>commentary to=functions.special_function_with_opt<|message|>'
     '{"arg1": 1, "arg2": 2}',
     ("", "", [*CALL1, ("special_function_with_opt", {"arg1": 1, "arg2": 2})])),
    # calls to tools the request did not offer (built-ins) are dropped, not shown as text
    ("<|channel|>analysis<|message|>I will run python<|end|>"
     "<|start|>assistant<|channel|>commentary to=python <|constrain|>code<|message|>print(1)",
     ("", "I will run python", [])),
    # the header may leave out <|start|>assistant before a later message
    ("<|channel|>analysis<|message|>Hmm<|end|><|channel|>final<|message|>Yes", ("Yes", "Hmm", [])),
])
def test_harmony(text: str, expected: tuple) -> None:
    assert parse("harmony", text) == expected


def test_harmony_reads_the_message_the_prompt_opened() -> None:
    # a prefilled final message: the prompt already wrote the header (and some of the answer)
    prompt = "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>Hel"
    assert parse("harmony", "lo!", prompt=prompt) == ("lo!", "", [])
    prompt = "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>analysis<|message|>Let"
    assert parse("harmony", " me see<|end|><|start|>assistant<|channel|>final<|message|>ok",
                 prompt=prompt) == ("ok", "me see", [])


def test_harmony_thinks_whatever_think_says() -> None:
    # compat(ollama): gpt-oss always reasons; its analysis channel is never content
    text = "<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|channel|>final<|message|>4"
    assert parse("harmony", text, think=False) == ("4", "hmm", [])


def test_harmony_tool_names_are_identifiers_and_map_back() -> None:
    names = ToolNames([Tool(name="get-weather.now"), Tool(name="get_weather_now"), Tool(name="9lives"),
                       Tool(name="browser.search"), Tool(name="héllo wörld!")])
    assert names.to_model == {"get-weather.now": "get_weather_now", "get_weather_now": "get_weather_now_2",
                              "9lives": "_9lives", "browser.search": "browser.search",
                              "héllo wörld!": "héllo_wörld"}
    tool = Tool(name="get-weather.now", parameters={"type": "object", "properties": {}})
    text = "<|channel|>commentary to=functions.get_weather_now<|message|>{}"
    assert parse("harmony", text, tools=[tool]) == ("", "", [("get-weather.now", {})])


# ---- Qwen3-Coder -------------------------------------------------------------------------------------
QWEN_BODY = "<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>"
QWEN_CALL = "<tool_call>\n" + QWEN_BODY


@pytest.mark.parametrize(("text", "expected"), [
    (HELLO, (HELLO, "", [])),
    (QWEN_CALL, ("", "", CALL1)),
    # some models skip the opening <tool_call>
    (QWEN_BODY, ("", "", CALL1)),
    ("Let me call it.\n" + QWEN_BODY, ("Let me call it.\n", "", CALL1)),
    (QWEN_CALL + "\n<tool_call>\n<function=special_function_with_opt>\n<parameter=arg1>\n1\n</parameter>\n"
     "<parameter=arg2>\n2\n</parameter>\n</function>\n</tool_call>",
     ("", "", [*CALL1, ("special_function_with_opt", {"arg1": 1, "arg2": 2})])),
    # values are read as the schema types them; strings keep inner newlines
    ("<tool_call>\n<function=get_weather>\n<parameter=city>\nNew\nYork\n</parameter>\n<parameter=days>\n3\n"
     "</parameter>\n<parameter=metric>\ntrue\n</parameter>\n<parameter=tags>\n[\"a\", 1]\n</parameter>\n"
     "</function>\n</tool_call>",
     ("", "", [("get_weather", {"city": "New\nYork", "days": 3, "metric": True, "tags": ["a", 1]})])),
    # text that only looks like a call stays text
    ("#include <functional>\nint x;", ("#include <functional>\nint x;", "", [])),
    ("<tool_call>\n<function=unknown_tool>\n</function>\n</tool_call>",
     ("<tool_call>\n<function=unknown_tool>\n</function>\n</tool_call>", "", [])),
])
def test_qwen3_coder(text: str, expected: tuple) -> None:
    assert parse("qwen3-coder", text) == expected


def test_qwen3_coder_unclosed_call_at_the_end_still_counts() -> None:
    assert parse("qwen3-coder", QWEN_CALL.removesuffix("</tool_call>")) == ("", "", CALL1)


# ---- GLM-4.5 / 4.6 / 4.7 -----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>",
     ("", "", CALL1)),
    ("<tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call>",
     ("", "", CALL1)),
    ("<think>I'm\nthinking</think>" + HELLO, (HELLO, "I'm\nthinking", [])),
    ("<think>Let me check</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
     "<arg_value>42</arg_value>\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>",
     ("", "Let me check", [("get_weather", {"city": "42", "days": 2})])),
    ("<tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call>"
     "<tool_call>special_function_with_opt<arg_key>arg1</arg_key><arg_value>1</arg_value>"
     "<arg_key>arg2</arg_key><arg_value>2</arg_value></tool_call>",
     ("", "", [*CALL1, ("special_function_with_opt", {"arg1": 1, "arg2": 2})])),
])
def test_glm(text: str, expected: tuple) -> None:
    assert parse("glm-4.6", text) == expected


def test_glm_forced_open_reasoning() -> None:
    # GLM-4.7-Flash's prompt ends with <think>: the answer starts inside the reasoning
    got = parse("glm-4.7", "I'm\nthinking</think>" + HELLO, starts_thinking=True)
    assert got == (HELLO, "I'm\nthinking", [])


# ---- DeepSeek R1 / V3.1 ------------------------------------------------------------------------------
V31 = ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>special_function<｜tool▁sep｜>{"arg1": 1}'
       "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
R1 = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n```json\n"
      '{"arg1": 1}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>')


@pytest.mark.parametrize(("text", "starts", "expected"), [
    (V31, False, ("", "", CALL1)),
    ("REASONING</think>" + V31, True, ("", "REASONING", CALL1)),
    ("REASONING</think>CONTENT<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>special_function<｜tool▁sep｜>"
     '{"arg1": 1}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}'
     "<｜tool▁call▁end｜><｜tool▁calls▁end｜>", True,
     ("CONTENT", "REASONING", [*CALL1, ("get_weather", {"city": "Paris"})])),
    ("REASONING</think>\nCONTENT", True, ("CONTENT", "REASONING", [])),
    ("CONTENT", False, ("CONTENT", "", [])),
    (R1, False, ("", "", CALL1)),
    ("I'm\nthinking</think>" + R1, True, ("", "I'm\nthinking", CALL1)),
    ("<think>\nhmm\n</think>\n\n" + HELLO, False, (HELLO, "hmm\n", [])),
])
def test_deepseek(text: str, starts: bool, expected: tuple) -> None:
    assert parse("deepseek3", text, starts_thinking=starts) == expected


# ---- Kimi K2 -----------------------------------------------------------------------------------------
KIMI = ("<|tool_calls_section_begin|><|tool_call_begin|>functions.special_function:0"
        '<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_end|><|tool_calls_section_end|>')


@pytest.mark.parametrize(("text", "expected"), [
    (HELLO, (HELLO, "", [])),
    (KIMI, ("", "", CALL1)),
    ("<think>I'm thinking about this</think>" + KIMI, ("", "I'm thinking about this", CALL1)),
    (HELLO + KIMI, (HELLO, "", CALL1)),
    ("<|tool_calls_section_begin|>"
     '<|tool_call_begin|>functions.special_function:0<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_end|>'
     "<|tool_call_begin|>functions.special_function_with_opt:1<|tool_call_argument_begin|>"
     '{"arg1": 1, "arg2": 2}<|tool_call_end|><|tool_calls_section_end|>',
     ("", "", [*CALL1, ("special_function_with_opt", {"arg1": 1, "arg2": 2})])),
    # reasoning that runs straight into the calls
    ("<think>need to call" + KIMI, ("", "need to call", CALL1)),
])
def test_kimi_k2(text: str, expected: tuple) -> None:
    assert parse("kimi-k2-thinking", text) == expected


def test_kimi_k2_keeps_the_models_call_id() -> None:
    fmt = select("kimi-k2", "", None, False, "{")
    p = new_parser(fmt, tools=TOOLS, think=False, starts_thinking=False, prompt="")
    assert p is not None
    calls = p.feed(KIMI).tool_calls + p.finish().tool_calls
    assert [c.id for c in calls] == ["functions.special_function:0"]


# ---- Command-R ---------------------------------------------------------------------------------------
R7B_CALL = ('<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "special_function", '
            '"parameters": {"arg1": 1}}\n]<|END_ACTION|>')


@pytest.mark.parametrize(("text", "expected"), [
    ("<|START_RESPONSE|>" + HELLO + "<|END_RESPONSE|>", (HELLO, "", [])),
    ("<|START_THINKING|>I'm\nthinking<|END_THINKING|><|START_RESPONSE|>" + HELLO + "<|END_RESPONSE|>",
     (HELLO, "I'm\nthinking", [])),
    ("<|START_THINKING|>I'm\nthinking<|END_THINKING|>" + R7B_CALL, ("", "I'm\nthinking", CALL1)),
    ("<|START_THINKING|><|END_THINKING|>" + R7B_CALL, ("", "", CALL1)),
])
def test_command_r7b(text: str, expected: tuple) -> None:
    assert parse("command-r7b", text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (HELLO, (HELLO, "", [])),
    ('Action:\n```json\n[{"tool_name": "special_function", "parameters": {"arg1": 1}}]\n```',
     ("", "", CALL1)),
    ('Action: ```json\n[\n    {\n        "tool_name": "special_function",\n'
     '        "parameters": {"arg1": 1}\n    }\n]```', ("", "", CALL1)),
    ('Action: ```json\n[{"tool_name": "special_function", "parameters": {"arg1": 1}}]', ("", "", CALL1)),
    # "Action:" in prose, or an action on a tool nobody offered, stays text
    ("Action: none needed.", ("Action: none needed.", "", [])),
    ('Action: ```json\n[{"tool_name": "directly-answer", "parameters": {}}]```',
     ('Action: ```json\n[{"tool_name": "directly-answer", "parameters": {}}]```', "", [])),
])
def test_command_r(text: str, expected: tuple) -> None:
    assert parse("command-r", text) == expected


# ---- selection ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("parser", "template", "name", "thinks"), [
    ("harmony", "", "harmony", True),
    (None, "<|start|>assistant<|channel|>final<|message|>", "harmony", True),
    (None, "<tool_call>\n<function=x>\n<parameter=y>", "qwen3-coder", False),
    (None, "<think><tool_call>\n<function=x>\n<parameter=y>", "qwen3-coder", True),
    (None, "<｜Assistant｜><think><｜tool▁calls▁begin｜>", "deepseek", True),
    ("deepseek3", "{{ .Prompt }}", "deepseek", True),
    (None, "<|tool_calls_section_begin|>", "kimi-k2", False),
    (None, "<think><|tool_calls_section_begin|>", "kimi-k2", True),
    (None, "<|START_THINKING|><|START_ACTION|>", "command-r7b", True),
    (None, "<|CHATBOT_TOKEN|> Write 'Action:'", "command-r", False),
    (None, "<think><tool_call>{{ name }}<arg_key>", "glm", True),
    ("passthrough", "<think>", "passthrough", False),
    (None, "plain", "generic", False),
])
def test_selection(parser: str | None, template: str, name: str, thinks: bool) -> None:
    fmt = select(parser, template, None, False, "{")
    assert (fmt.name, fmt.thinks) == (name, thinks)
    assert fmt.tools == (name not in ("generic", "passthrough"))


def test_harmony_answers_are_not_cut_at_end_of_message() -> None:
    assert "<|end|>" in OutputFormat("harmony").stops


@pytest.mark.parametrize("name", ["qwen3-coder", "command-r", "deepseek3", "kimi-k2", "glm-4.6",
                                  "command-r7b"])
def test_an_unclosed_call_is_not_rescanned_per_token(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a model that opens a call and rambles on must not cost a rescan of the whole call per token
    from corral.prompts.formats import sections

    fmt = select(name, "", None, False, "{")
    parser = new_parser(fmt, tools=TOOLS, think=False, starts_thinking=False, prompt="")
    assert isinstance(parser, sections.SectionParser)
    scans = 0
    real = parser.layout.scan
    assert real is not None

    def counting(*args: object) -> object:
        nonlocal scans
        scans += 1
        return real(*args)

    monkeypatch.setattr(parser, "layout", sections.Layout(**{**parser.layout.__dict__, "scan": counting}))
    opener = parser.openers[0]
    head = '\n[{"tool_name": "special_function", "parameters": {"arg1": "' if name == "command-r" else "\n"
    parser.feed(opener + head)
    for _ in range(5000):
        parser.feed("word ")
    assert scans < 30
    out = parser.finish()  # the end of the answer settles it: not a call, so it is text
    assert not out.tool_calls and "word word" in out.content
