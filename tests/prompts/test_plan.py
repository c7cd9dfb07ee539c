"""Prompt plans: template precedence, system/MESSAGE/raw/suffix, truncation, grammar, capability errors."""

from __future__ import annotations

import json

import pytest

from corral.conversation import Message
from corral.errors import CapabilityError, GrammarError, InvalidRequestError, TemplateError
from corral.jobs import ChatJob, GenerateJob
from corral.prompts import GEMMA3_PARAMS, GEMMA3_TEMPLATE, JSON_GBNF, plan_chat, plan_generate
from corral.testing.gbnf import matches, parse_gbnf

from .conftest import CONVERSATION, WEATHER, go_template, jinja_template, make_spec

CHATML = go_template("chatml")
JINJA_CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat(spec, *, gguf: str | None = None, bos: str = "", **kw):
    return plan_chat(spec, ChatJob(model="x", **kw), gguf_template=gguf, bos_token=bos, eos_token="")


def gen(spec, *, gguf: str | None = None, bos: str = "", **kw):
    return plan_generate(spec, GenerateJob(model="x", **kw), gguf_template=gguf, bos_token=bos,
                         eos_token="")


def user(text: str) -> Message:
    return Message(role="user", content=text)


def test_template_precedence() -> None:
    go = make_spec(template="GO {{ range .Messages }}{{ .Content }}{{ end }}")
    # the model's Go TEMPLATE beats the GGUF's Jinja template
    assert chat(go, gguf=JINJA_CHATML, messages=[user("a")]).text == "GO a"
    # no Go template: the GGUF's Jinja template
    assert chat(make_spec(), gguf=JINJA_CHATML, messages=[user("a")]).text == \
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n"
    # neither: {{ .Prompt }}
    assert chat(make_spec(), messages=[user("a")]).text == "a"
    # a generate request's template beats both
    assert gen(go, gguf=JINJA_CHATML, prompt="p", template="[{{ .Prompt }}]").text == "[p]"


def test_system_and_seeded_messages() -> None:
    seeded = [user("seed q"), Message(role="assistant", content="seed a")]
    spec = make_spec(template=CHATML, system="SYS", messages=seeded)
    text = chat(spec, messages=[user("q")]).text
    assert text == ("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nseed q<|im_end|>\n"
                    "<|im_start|>assistant\nseed a<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
                    "<|im_start|>assistant\n")
    # a conversation that brings its own system message keeps it (after the seeded MESSAGEs)
    text = chat(make_spec(template=CHATML, system="SYS"), messages=[Message(role="system", content="MINE"),
                                                                      user("q")]).text
    assert "SYS" not in text and text.startswith("<|im_start|>system\nMINE")


def test_generate_system_override_raw_and_context() -> None:
    spec = make_spec(template=CHATML, system="SYS", messages=[user("seed")])
    assert gen(spec, prompt="p").text.startswith("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nseed")
    assert gen(spec, prompt="p", system="OTHER").text.startswith("<|im_start|>system\nOTHER<|im_end|>")
    # continuing from `context`: seeded MESSAGEs are not repeated
    assert "seed" not in gen(spec, prompt="p", context=[1, 2]).text
    raw = gen(spec, prompt="<|im_start|>anything", raw=True)
    assert raw.text == "<|im_start|>anything" and raw.add_special
    with pytest.raises(InvalidRequestError, match="raw mode does not support template, system, or context"):
        gen(spec, prompt="p", raw=True, system="s")


def test_bos_is_not_doubled() -> None:
    tmpl = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    assert chat(make_spec(), gguf=tmpl, bos="<bos>", messages=[user("a")]).add_special is False
    assert chat(make_spec(template=CHATML), bos="<bos>", messages=[user("a")]).add_special is True


def test_history_truncation_keeps_system_and_last_message() -> None:
    msgs = [Message(role="system", content="S")] + [user(f"m{i} " + "w " * 20) for i in range(10)]
    spec = make_spec(template=CHATML)
    seen: list[str] = []

    def count(text: str, add_bos: bool) -> list[str]:  # words stand in for the tokenizer's tokens
        seen.append(text)
        return text.split()

    full = chat(spec, messages=msgs).text
    assert not chat(spec, messages=msgs).truncated
    limit = len(full.split()) // 2
    cut = plan_chat(spec, ChatJob(model="x", messages=msgs), gguf_template=None, bos_token="", eos_token="",
                    count_tokens=count, num_ctx=limit)
    assert cut.truncated and len(cut.text.split()) <= limit
    # the tokens counted for the rendering that is sent come with it: the engine tokenizes it once
    assert cut.tokens == cut.text.split() and seen.count(cut.text) == 1
    whole = plan_chat(spec, ChatJob(model="x", messages=msgs), gguf_template=None, bos_token="", eos_token="",
                      count_tokens=count, num_ctx=10 * limit)
    assert not whole.truncated and whole.text == full and whole.tokens == full.split()
    assert cut.text.startswith("<|im_start|>system\nS<|im_end|>")
    assert "m9 " in cut.text and "m0 " not in cut.text
    # the newest messages are the ones kept
    kept = [i for i in range(10) if f"m{i} " in cut.text]
    assert kept == list(range(kept[0], 10))
    # even when nothing fits, the last message stays
    tiny = plan_chat(spec, ChatJob(model="x", messages=msgs), gguf_template=None, bos_token="", eos_token="",
                     count_tokens=count, num_ctx=1)
    assert "m9 " in tiny.text and "m8 " not in tiny.text and "S<|im_end|>" in tiny.text



def test_truncation_keeps_a_message_split_into_parts_whole() -> None:
    """The OpenAI API's content parts become messages of their own (as in Ollama); a window never starts
    inside one client message, so none of the question's images or text is dropped unawares."""
    history = [Message(role="user", content="old " * 20), Message(role="assistant", content="reply " * 20)]
    image = Message(role="user", content="", images=[b"img"], continues=True)
    closely = Message(role="user", content="closely", continues=True)
    parts = [user("look at these"), image, image, image, closely]
    spec = make_spec(template=CHATML)

    def plan(num_ctx: int):
        return plan_chat(spec, ChatJob(model="x", messages=[*history, *parts]), gguf_template=None,
                         bos_token="", eos_token="", count_tokens=lambda text, bos: text.split(),
                         num_ctx=num_ctx)

    for num_ctx in (1, 100, 768 * 3 + 20):  # images count 768 tokens each here, as Ollama counts them
        cut = plan(num_ctx)
        assert cut.truncated and "old" not in cut.text
        assert "look at these" in cut.text and "closely" in cut.text and len(cut.images) == 3
    assert not plan(10_000).truncated

def test_format_becomes_a_grammar() -> None:
    spec = make_spec(template=CHATML)
    assert chat(spec, messages=[user("a")]).grammar is None
    assert chat(spec, messages=[user("a")], format="json").grammar == JSON_GBNF
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    g = chat(spec, messages=[user("a")], format=schema).grammar
    assert g is not None and '"\\"n\\""' in g
    assert gen(spec, prompt="a", format='{"type": "boolean"}').grammar.startswith("root ::= boolean")
    with pytest.raises(GrammarError, match="pattern"):
        chat(spec, messages=[user("a")], format={"type": "string", "pattern": "x"})
    with pytest.raises(InvalidRequestError, match="invalid format"):
        chat(spec, messages=[user("a")], format="yaml")


def test_capability_errors_use_ollamas_wording() -> None:
    plain = make_spec("llama3.2", template=CHATML)
    full = r"^registry.ollama.ai/library/llama3.2:latest does not support tools$"
    with pytest.raises(CapabilityError, match=full):
        chat(plain, messages=[user("a")], tools=[WEATHER])
    with pytest.raises(CapabilityError, match=r'^"llama3.2:latest" does not support thinking$'):
        chat(plain, messages=[user("a")], think=True)
    with pytest.raises(CapabilityError, match="does not support insert"):
        gen(plain, prompt="a", suffix="b")
    with pytest.raises(InvalidRequestError, match="invalid think value"):
        chat(plain, messages=[user("a")], think="extreme")
    assert chat(plain, messages=[user("a")], think=False).think is False  # false is always allowed


def test_thinking_models_think_by_default() -> None:
    spec = make_spec(template=go_template("deepseek-r1"))
    plan = chat(spec, messages=[user("2+2?")])
    assert plan.think and plan.think_markers == ("<think>", "</think>")
    assert chat(spec, messages=[user("2+2?")], think="high").think
    assert not chat(spec, messages=[user("2+2?")], think=False).think
    parser = plan.new_parser()
    d1, d2 = parser.feed("<think>4, surely</think>\n\n4"), parser.finish()
    assert (d1.thinking + d2.thinking, d1.content + d2.content) == ("4, surely", "4")


def test_bad_templates_are_clear_errors() -> None:
    with pytest.raises(TemplateError, match=":2: unexpected"):
        chat(make_spec(template="ok\n{{ end }}"), messages=[user("a")])
    with pytest.raises(TemplateError, match="no way"):
        chat(make_spec(), gguf="{{ raise_exception('no way') }}", messages=[user("a")])
    with pytest.raises(TemplateError, match="unclosed action"):
        gen(make_spec(), prompt="a", template="{{ .Prompt")


def test_gemma3_builtin_plan() -> None:
    spec = make_spec("gemma3:270m", template=GEMMA3_TEMPLATE, params=GEMMA3_PARAMS)
    plan = chat(spec, bos="<bos>", messages=list(CONVERSATION))
    assert plan.add_special and plan.stop == ["<end_of_turn>"]
    assert plan.text.startswith("<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>")
    ollama_defaults = {"stop": ["<end_of_turn>"], "temperature": 1.0, "top_k": 64, "top_p": 0.95}
    assert {k: GEMMA3_PARAMS[k] for k in ollama_defaults} == ollama_defaults
    assert gen(spec, prompt="Hi").text == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_turn_suffix_is_what_follows_an_answer() -> None:
    gemma = chat(make_spec(template=GEMMA3_TEMPLATE), messages=list(CONVERSATION))
    assert gemma.turn_suffix == "<end_of_turn>\n<start_of_turn>user\n"
    assert chat(make_spec(template=CHATML), messages=[user("hi")]).turn_suffix == (
        "<|im_end|>\n<|im_start|>user\n")
    # the next turn's prompt really does continue the answer with it
    msgs = [user("hi"), Message(role="assistant", content="Hello!"), user("and?")]
    assert "Hello!" + gemma.turn_suffix + "and?" in chat(
        make_spec(template=GEMMA3_TEMPLATE), messages=msgs).text


def test_images_are_collected() -> None:
    msgs = [Message(role="user", content="look", images=[b"png1"]),
            Message(role="user", content="and", images=[b"p2"])]
    assert chat(make_spec(template=CHATML), messages=msgs).images == [b"png1", b"p2"]
    assert gen(make_spec(template=CHATML), prompt="x", images=[b"i"]).images == [b"i"]


def test_tool_plan_parses_the_templates_own_format() -> None:
    spec = make_spec(template=go_template("qwen2.5"))
    plan = chat(spec, messages=[user("weather in Paris?")], tools=[WEATHER])
    assert plan.tool_tag == "<tool_call>"
    p = plan.new_parser()
    d = p.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    calls = d.tool_calls + p.finish().tool_calls
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    # the parsed call goes back into the next prompt, followed by the tool's answer
    follow = [user("weather in Paris?"), Message(role="assistant", tool_calls=calls),
              Message(role="tool", content="22C", tool_name="get_weather")]
    text = chat(spec, messages=follow, tools=[WEATHER]).text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call>' in text
    assert text.endswith("<tool_response>\n22C\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    for family, tag in (("mistral", "[TOOL_CALLS]"), ("llama3", "{")):
        spec = make_spec(template=go_template(family))
        assert chat(spec, messages=[user("a")], tools=[WEATHER]).tool_tag == tag
    jinja = chat(make_spec(), gguf=jinja_template("Qwen-Qwen2.5-7B-Instruct"), messages=[user("a")],
                 tools=[WEATHER])
    assert jinja.tool_tag == "<tool_call>"


def test_a_required_tool_call_has_a_schema_form_too() -> None:
    """tool_choice required: the GBNF and, for llguidance backends, the same call as a schema inside
    the template's opener and closer (the think block first on a thinking model)."""
    qwen = chat(make_spec(template=go_template("qwen2.5")), messages=[user("a")], tools=[WEATHER],
                tool_choice="required")
    c = qwen.json_schema
    assert qwen.grammar and c is not None
    assert (c.opener, c.bracketed, c.closer, c.think_markers) == ("<tool_call>", False, "</tool_call>", None)
    assert json.loads(c.schema)["anyOf"][0]["properties"]["name"] == {"const": "get_weather"}
    mistral = chat(make_spec(template=go_template("mistral")), messages=[user("a")], tools=[WEATHER],
                   tool_choice="required", forced_tool="get_weather").json_schema
    assert mistral is not None and (mistral.opener, mistral.bracketed) == ("[TOOL_CALLS]", True)
    llama = chat(make_spec(template=go_template("llama3")), messages=[user("a")], tools=[WEATHER],
                 tool_choice="required").json_schema
    assert llama is not None and (llama.opener, llama.closer) == ("", "")
    qwen3 = chat(make_spec(), gguf=jinja_template("Qwen-Qwen3-0.6B"), messages=[user("a")], tools=[WEATHER],
                 tool_choice="required")
    assert qwen3.think and qwen3.json_schema is not None
    assert qwen3.json_schema.think_markers == ("<think>", "</think>")
    auto = chat(make_spec(template=go_template("qwen2.5")), messages=[user("a")], tools=[WEATHER])
    assert auto.json_schema is None


def test_thinking_models_may_reason_before_a_constrained_answer() -> None:
    spec = make_spec(template=go_template("deepseek-r1"))
    plan = chat(spec, messages=[user("as JSON")], format="json")
    rules = parse_gbnf(plan.grammar)
    assert matches(rules, '<think>\nok, {braces} and <tags>\n</think>\n\n{"a": 1}')
    assert matches(rules, '{"a": 1}')  # reasoning is optional
    assert not matches(rules, '<think>x</think> not json')
    p = plan.new_parser()
    d = [p.feed('<think>\nok\n</think>\n\n{"a": 1}'), p.finish()]
    assert ("".join(x.thinking for x in d), "".join(x.content for x in d)) == ("ok\n", '{"a": 1}')
    # the prompt opened the block: output starts inside it
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    inside = chat(make_spec(), gguf=jinja_template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"),
                  messages=[user("as JSON")], format=schema)
    rules = parse_gbnf(inside.grammar)
    assert inside.starts_thinking and matches(rules, 'hmm</think>\n{"n": 3}')
    assert not matches(rules, '{"n": 3}')
    # thinking off: the plain grammar
    assert chat(spec, messages=[user("as JSON")], format="json", think=False).grammar == JSON_GBNF


def test_echoed_reasoning_is_dropped_from_earlier_turns() -> None:
    spec = make_spec(template=go_template("deepseek-r1"))
    msgs = [user("a"), Message(role="assistant", content="<think>secret plan</think>\n\nB"), user("c")]
    text = chat(spec, messages=msgs).text
    assert "secret plan" not in text and "<｜Assistant｜>B<｜end▁of▁sentence｜>" in text
    # a model that does not think keeps the text as written
    assert "secret plan" in chat(make_spec(template=CHATML), messages=msgs).text
