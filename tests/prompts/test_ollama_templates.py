"""Golden renderings of Ollama library Go templates, and cross-checks against the same family's Jinja."""

from __future__ import annotations

import json

import pytest

from corral.conversation import Message, ToolCall
from corral.jobs import ChatJob, GenerateJob
from corral.prompts import GEMMA3_TEMPLATE, plan_chat, plan_generate

from .conftest import CONVERSATION, DATA, WEATHER, go_template, jinja_template, make_spec

SYS = "You are a helpful assistant"
GOLDEN = {
    "llama3": (
        f"<|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "qwen2.5": (
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "chatml": (
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "gemma3": (
        f"<start_of_turn>user\n{SYS}<end_of_turn>\n<start_of_turn>user\nHello<end_of_turn>\n"
        "<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "mistral": f"[INST] Hello[/INST] Hi there</s>[INST] {SYS}\n\nWho are you[/INST] ",
    # legacy (no .Messages): one run per turn, the last one cut after {{ .Response }}
    "phi3": (
        f"<|system|>\n{SYS}<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n"
        "<|user|>\nWho are you<|end|>\n<|assistant|>\n"
    ),
    "chatml-legacy": (
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
        "Hi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n"
    ),
    "deepseek-r1": (
        f"{SYS}<｜User｜>Hello<｜Assistant｜>Hi there<｜end▁of▁sentence｜>"
        "<｜User｜>Who are you<｜Assistant｜>"
    ),
}


def chat(template: str, messages=CONVERSATION, **kw) -> str:
    return plan_chat(make_spec(template=template), ChatJob(model="x", messages=list(messages), **kw),
                     gguf_template=None, bos_token="<s>", eos_token="</s>").text


@pytest.mark.parametrize("family", sorted(GOLDEN))
def test_golden(family: str) -> None:
    assert chat(go_template(family)) == GOLDEN[family]


def test_builtin_gemma3_matches_gemmas_own_format() -> None:
    # llama.cpp's expected rendering for Gemma: system text joins the first user turn
    cases = json.loads((DATA / "llama_cpp_chat_cases.json").read_text(encoding="utf-8"))
    gemma = next(c for c in cases["cases"] if c["name"] == "google/gemma-7b-it")
    # Gemma's own renderers trim message text; the Go template passes it through as written
    conv = [Message(role=r, content=t.strip()) for r, t in cases["conversation"]]
    assert chat(GEMMA3_TEMPLATE, conv) == gemma["expected_output"]
    # an assistant turn that is last is left open for the model to continue
    prefill = [Message(role="user", content="Hi"), Message(role="assistant", content="Well,")]
    expected = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nWell,"
    assert chat(GEMMA3_TEMPLATE, prefill) == expected


@pytest.mark.parametrize(("go", "jinja"), [("qwen2.5", "Qwen-Qwen2.5-7B-Instruct"),
                                           ("chatml", "Qwen-Qwen2.5-7B-Instruct")])
def test_go_and_jinja_agree_for_the_same_family(go: str, jinja: str) -> None:
    via_jinja = plan_chat(make_spec(), ChatJob(model="x", messages=list(CONVERSATION)),
                          gguf_template=jinja_template(jinja), bos_token="", eos_token="").text
    assert chat(go_template(go)) == via_jinja


def test_deepseek_r1_think_false_closes_the_block() -> None:
    out = chat(go_template("deepseek-r1"), CONVERSATION[:2], think=False)
    assert out.endswith("<｜Assistant｜><think>\n\n</think>\n\n")


def test_qwen_tools_and_tool_results() -> None:
    calls = [ToolCall(name="get_weather", arguments={"city": "Paris"}, id="call_1")]
    msgs = [Message(role="user", content="weather?"), Message(role="assistant", tool_calls=calls),
            Message(role="tool", content="22C", tool_name="get_weather")]
    out = chat(go_template("qwen2.5"), msgs, tools=[WEATHER])
    tool_json = ('{"type": "function", "function": {"name":"get_weather","description":"Get the weather",'
                 '"parameters":{"type":"object","required":["city"],'
                 '"properties":{"city":{"type":"string","description":"City"}}}}}')
    assert out.startswith("<|im_start|>system\n\n# Tools\n\nYou may call one or more functions")
    assert f"<tools>\n{tool_json}\n</tools>" in out
    assert out.endswith(
        "<|im_start|>user\nweather?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n22C\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_llama3_tools_in_last_user_turn() -> None:
    out = chat(go_template("llama3"), [Message(role="user", content="weather in Paris?")], tools=[WEATHER])
    assert "You are a helpful assistant with tool calling capabilities.<|eot_id|>" in out
    assert '{"type":"function","function":{"name":"get_weather"' in out
    assert out.endswith(
        "Question: weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_mistral_tools_block() -> None:
    out = chat(go_template("mistral"), [Message(role="user", content="hi")], tools=[WEATHER])
    assert out.startswith('[AVAILABLE_TOOLS] [{"type":"function","function":{"name":"get_weather"')
    assert out.endswith("}}}}][/AVAILABLE_TOOLS][INST] hi[/INST] ")


def test_fill_in_the_middle() -> None:
    rec = make_spec(template=go_template("codellama-fim"))
    plan = plan_generate(rec, GenerateJob(model="x", prompt="def f(", suffix="return x"), gguf_template=None,
                         bos_token="<s>", eos_token="</s>")
    assert plan.text == "<PRE> def f( <SUF>return x <MID>"
    plan = plan_generate(rec, GenerateJob(model="x", prompt="hi", system="sys"), gguf_template=None,
                         bos_token="<s>", eos_token="</s>")
    assert plan.text == "[INST] <<SYS>>sys<</SYS>>\n\nhi [/INST]"
