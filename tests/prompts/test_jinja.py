"""GGUF Jinja chat templates: llama.cpp's expected renderings, real model templates, and hostile templates."""

from __future__ import annotations

import json
import os
import time

import pytest

from corral.conversation import Message, ToolCall
from corral.errors import TemplateError
from corral.jobs import ChatJob
from corral.prompts import jinja, plan_chat, render_jinja
from corral.prompts.jinja import render_chat

from .conftest import CONVERSATION, DATA, WEATHER, jinja_template, make_spec

CASES = json.loads((DATA / "llama_cpp_chat_cases.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", [c for c in CASES["cases"] if c.get("supported_with_jinja", True)],
                         ids=lambda c: c["name"])
def test_llama_cpp_expected_renderings(case: dict) -> None:
    conv = CASES["conversation"] + case.get("extra_conversation", [])
    messages = [{"role": r, "content": t} for r, t in conv]
    out = render_chat(case["template_str"], messages, {"add_generation_prompt": True,
                                                       "bos_token": case.get("bos_token", ""),
                                                       "eos_token": case.get("eos_token", "")})
    assert out == (case.get("expected_output_jinja") or case["expected_output"])


def _plan(template: str, messages: list[Message], **kw):
    return plan_chat(make_spec(), ChatJob(model="x", messages=messages, **kw), gguf_template=template,
                     bos_token="<s>", eos_token="</s>")


def test_qwen25_tools_and_tool_round_trip() -> None:
    tmpl = jinja_template("Qwen-Qwen2.5-7B-Instruct")
    calls = [ToolCall(name="get_weather", arguments={"city": "Paris"}, id="call_1")]
    msgs = [Message(role="user", content="weather?"), Message(role="assistant", tool_calls=calls),
            Message(role="tool", content="22C", tool_name="get_weather")]
    plan = _plan(tmpl, msgs, tools=[WEATHER])
    assert plan.tool_tag == "<tool_call>"
    assert '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather"' \
        in plan.text
    assert plan.text.endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n22C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")
    assert plan.stop == ["<|im_end|>"]
    # without a system message Qwen 2.5 adds its own
    assert _plan(tmpl, [Message(role="user", content="hi")]).text.startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>")


def test_llama31_bos_and_tools() -> None:
    plan = _plan(jinja_template("meta-llama-Llama-3.1-8B-Instruct"), list(CONVERSATION), tools=[WEATHER])
    assert plan.text.startswith("<s><|start_header_id|>system<|end_header_id|>")
    assert plan.add_special is False  # the template wrote BOS itself
    assert '"name": "get_weather"' in plan.text
    assert plan.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_deepseek_r1_opens_the_think_block() -> None:
    tmpl = jinja_template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
    plan = _plan(tmpl, list(CONVERSATION))
    assert plan.think and plan.text.endswith("<｜Assistant｜><think>\n") and plan.starts_thinking
    off = _plan(tmpl, list(CONVERSATION), think=False)
    assert not off.think and off.text.endswith("<think>\n</think>")
    # earlier answers lose their reasoning, as the template says
    msgs = [Message(role="user", content="a"), Message(role="assistant", content="<think>hmm</think>B"),
            Message(role="user", content="c")]
    assert "hmm" not in _plan(tmpl, msgs).text


def test_qwen3_enable_thinking() -> None:
    tmpl = jinja_template("Qwen-Qwen3-0.6B")
    assert _plan(tmpl, [Message(role="user", content="hi")]).text.endswith("<|im_start|>assistant\n")
    assert _plan(tmpl, [Message(role="user", content="hi")], think=False).text.endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_gemma2_system_role_polyfill() -> None:
    plan = _plan(jinja_template("google-gemma-2-2b-it"), list(CONVERSATION))
    assert plan.text == ("<s><start_of_turn>user\nYou are a helpful assistant\nHello<end_of_turn>\n"
                         "<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you"
                         "<end_of_turn>\n<start_of_turn>model\n")


def test_phi35_and_mistral_nemo() -> None:
    phi = _plan(jinja_template("microsoft-Phi-3.5-mini-instruct"), list(CONVERSATION)).text
    assert phi == ("<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\n"
                   "Hi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n")
    nemo = _plan(jinja_template("mistralai-Mistral-Nemo-Instruct-2407"), list(CONVERSATION), tools=[WEATHER])
    assert nemo.text.startswith("<s>[INST]Hello[/INST]Hi there</s>[AVAILABLE_TOOLS]")
    assert nemo.text.endswith("[/AVAILABLE_TOOLS][INST]You are a helpful assistant\n\nWho are you[/INST]")
    assert nemo.tool_tag == "[TOOL_CALLS]"


def test_hermes_renders_without_tools() -> None:
    out = _plan(jinja_template("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use"), list(CONVERSATION)).text
    assert out.endswith("<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n")


def test_large_inputs_are_not_mistaken_for_bombs() -> None:
    big = "word " * 1_000_000  # 5 MB of conversation: the size limit scales with the input
    tmpl = "{% for m in messages %}{{ '<|' + m.role + '|>' ~ m.content ~ '\\n' }}{% endfor %}"
    assert len(render_jinja(tmpl, {"messages": [{"role": "user", "content": big}]})) == len(big) + 9


def test_helpers_and_template_errors() -> None:
    out = render_jinja("{% generation %}{{ x|tojson }}{% endgeneration %}|{{ strftime_now('%Y') }}",
                       {"x": {"a": [1, "é"]}})
    assert out == '{"a": [1, "é"]}|' + time.strftime("%Y")
    with pytest.raises(TemplateError, match="Conversation roles must alternate"):
        render_jinja("{{ raise_exception('Conversation roles must alternate') }}", {})
    with pytest.raises(TemplateError, match="syntax error at line 2"):
        render_jinja("ok\n{% if %}", {})
    with pytest.raises(TemplateError, match="failed to render"):
        render_jinja("{{ messages[5]['content'] }}", {"messages": []})


SSTI = [
    "{{ lipsum.__globals__['os'].popen('touch CANARY').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch CANARY').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ namespace.__init__.__globals__['os'].system('touch CANARY') }}",
    "{{ joiner.__init__.__globals__['os'].system('touch CANARY') }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ messages.append('x') }}",
]


@pytest.mark.parametrize("payload", SSTI)
def test_ssti_payloads_are_refused(payload: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TemplateError):
        render_jinja(payload, {"messages": []})
    assert not os.path.exists(tmp_path / "CANARY")


@pytest.mark.parametrize("bomb", [
    "{{ 'a' * 10**10 }}",
    "{{ 'a' * 100000 * 100000 }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set a = 'aaaaaaaaaaaaaaaa' %}{% set b = a~a~a~a~a~a~a~a~a~a~a~a~a~a~a~a %}"
    "{% set a = b~b~b~b~b~b~b~b~b~b~b~b~b~b~b~b %}{% set b = a~a~a~a~a~a~a~a~a~a~a~a~a~a~a~a %}"
    "{% set a = b~b~b~b~b~b~b~b~b~b~b~b~b~b~b~b %}{% set b = a~a~a~a~a~a~a~a~a~a~a~a~a~a~a~a %}"
    "{% set a = b~b~b~b~b~b~b~b~b~b~b~b~b~b~b~b %}{{ a|length }}",
    "{{ 2 ** 100000000 }}",
    "{{ 'x'.center(10**9) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ ('a' * 1000).replace('a', 'b' * 100000) }}",
    "{{ ('a' * 1000) | replace('a', 'b' * 100000) }}",
    "{{ 'x' | center(999999999) }}",
    "{{ 'x' | indent(999999999, true) }}",
    "x" * (11 << 20),
])
def test_resource_bombs_fail_fast(bomb: str, monkeypatch) -> None:
    monkeypatch.setattr(jinja, "TIME_LIMIT_S", 0.5)  # the loop bombs hit this limit; keep the suite quick
    start = time.monotonic()
    with pytest.raises(TemplateError):
        render_jinja(bomb, {})
    assert time.monotonic() - start < 3.0


def test_templates_may_grow_their_own_lists_only() -> None:
    # Kimi K2's template keeps a queue with append/pop; the input (messages, tools) stays read-only
    src = ("{% set ns = namespace(q=[]) %}{% for m in messages %}{% set _ = ns.q.append(m.role) %}"
           "{% endfor %}{% set _ = ns.q.pop() %}{{ ns.q | join(',') }}")
    assert render_jinja(src, {"messages": [{"role": "user"}, {"role": "assistant"}]}) == "user"
    with pytest.raises(TemplateError, match="unsafe"):
        render_jinja("{{ messages[0].tags.append(1) }}", {"messages": [{"role": "user", "tags": []}]})
