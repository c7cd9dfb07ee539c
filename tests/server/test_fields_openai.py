"""Every field of the OpenAI API's requests has its effect or a 400 naming it (over the fake backend).

Each test claims the fields it shows with ``@pytest.mark.fields`` (see tests/test_request_fields.py).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from litestar.testing import TestClient
from server_support import Harness, sse

from corral.testing.fake import FakeCall

USER = [{"role": "user", "content": "hello"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}}


def last_generate(harness: Harness) -> FakeCall:
    return [c for c in harness.fake.history if c.op == "generate"][-1]


def chat(client: TestClient[Any], **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, **body})


def test_unknown_fields_are_refused_by_name(client: TestClient[Any]) -> None:
    # compat(openai): "Unrecognized request argument supplied: ..." is a 400 there too
    for body in ({"prediction": {"type": "content", "content": "x"}}, {"functions": []}, {"store": True}):
        r = chat(client, **body)
        assert r.status_code == 400 and next(iter(body)) in r.json()["error"]["message"]
    r = chat(client, messages=[{"role": "user", "content": "x", "audio": {"id": "a"}}])
    assert r.status_code == 400 and "audio" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "best_of": 2})
    assert r.status_code == 400 and "best_of" in r.json()["error"]["message"]


# ---- sampling fields ---------------------------------------------------------------------------------
@pytest.mark.fields(
    "openai.ChatCompletionRequest.top_k",
    "openai.ChatCompletionRequest.min_p",
    "openai.CompletionRequest.top_k",
    "openai.CompletionRequest.min_p",
    "openai.CompletionRequest.seed",
    "openai.CompletionRequest.temperature",
    "openai.CompletionRequest.top_p",
    "openai.CompletionRequest.frequency_penalty",
    "openai.CompletionRequest.presence_penalty",
    "openai.CompletionRequest.stop",
    "openai.CompletionRequest.max_tokens",
    "openai.ChatCompletionRequest.max_completion_tokens",
)
def test_sampling_fields_reach_the_sampler(client: TestClient[Any], harness: Harness) -> None:
    r = chat(client, top_k=7, min_p=0.2, max_completion_tokens=4)
    assert r.status_code == 200
    request = last_generate(harness).request
    assert request is not None and (request.sampling.top_k, request.sampling.min_p) == (7, 0.2)
    assert request.num_predict == 4
    r = client.post(
        "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "x",
            "top_k": 3,
            "min_p": 0.1,
            "seed": 9,
            "temperature": 0.7,
            "top_p": 0.8,
            "frequency_penalty": 0.3,
            "presence_penalty": 0.4,
            "stop": "zz",
            "max_tokens": 2,
        },
    )
    assert r.status_code == 200
    request = last_generate(harness).request
    assert request is not None and request.num_predict == 2 and "zz" in request.stop
    s = request.sampling
    assert (s.top_k, s.min_p, s.seed, s.temperature, s.top_p) == (3, 0.1, 9, 0.7, 0.8)
    assert (s.frequency_penalty, s.presence_penalty) == (0.3, 0.4)
    r = chat(client, min_p=1.5)
    assert r.status_code == 400 and "min_p" in r.json()["error"]["message"]
    r = chat(client, top_k=-1)
    assert r.status_code == 400 and "top_k" in r.json()["error"]["message"]


@pytest.mark.fields("openai.ChatCompletionRequest.logit_bias", "openai.CompletionRequest.logit_bias")
def test_logit_bias_reaches_the_sampler_as_token_ids(client: TestClient[Any], harness: Harness) -> None:
    r = chat(client, logit_bias={"100": -100, "7": 5.5}, max_tokens=1)
    assert r.status_code == 200
    assert last_generate(harness).request.sampling.logit_bias == {100: -100.0, 7: 5.5}  # type: ignore[union-attr]
    r = client.post(
        "/v1/completions", json={"model": "tiny", "prompt": "x", "logit_bias": {"42": 100}, "max_tokens": 1}
    )
    assert r.status_code == 200
    assert last_generate(harness).request.sampling.logit_bias == {42: 100.0}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("bias", "fragment"),
    [
        ({"hello": 1}, "is not a token id"),
        ({"5": 101}, "from -100 to 100"),
        ({"5": "up"}, "must be a number"),
        ({"5": True}, "must be a number"),
        ({str(i): 1 for i in range(1100)}, "the limit is 1024"),
        ({"99999999": -100}, "not in the vocabulary"),
    ],
)
def test_logit_bias_is_checked(client: TestClient[Any], bias: dict[str, Any], fragment: str) -> None:
    r = chat(client, logit_bias=bias, max_tokens=1)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text


@pytest.mark.fields("openai.ChatCompletionRequest.grammar", "openai.CompletionRequest.grammar")
def test_grammar_on_v1(client: TestClient[Any], harness: Harness) -> None:
    grammar = 'root ::= ("red" | "blue") " sky"\n'
    r = chat(client, grammar=grammar)
    assert r.json()["choices"][0]["message"]["content"] in ("red sky", "blue sky")
    assert last_generate(harness).request.sampling.grammar == grammar  # type: ignore[union-attr]
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "grammar": grammar})
    assert r.json()["choices"][0]["text"] in ("red sky", "blue sky")
    r = chat(client, grammar="root ::= (((")
    assert r.status_code == 400 and "grammar" in r.json()["error"]["message"]
    r = chat(client, grammar=grammar, response_format={"type": "json_object"})
    assert r.status_code == 400 and "grammar cannot be combined with format" in r.json()["error"]["message"]


# ---- n choices ---------------------------------------------------------------------------------------
@pytest.mark.fields("openai.ChatCompletionRequest.n", "openai.ChatCompletionRequest.seed")
def test_n_choices_each_sampled_with_its_own_seed(client: TestClient[Any], harness: Harness) -> None:
    r = chat(client, n=3, seed=40, temperature=0.9)
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in body["choices"]]
    assert len(set(texts)) == 3  # seeds 40, 41 and 42: three different samples
    seeds = sorted(c.request.sampling.seed for c in harness.fake.history[-3:] if c.request)
    assert seeds == [40, 41, 42]
    again = [c["message"]["content"] for c in chat(client, n=3, seed=40, temperature=0.9).json()["choices"]]
    assert again == texts  # and each reproduces
    usage = body["usage"]
    prompt = harness.fake.history[-1].request.prompt  # type: ignore[union-attr]
    assert usage["prompt_tokens"] == len(prompt)  # the prompt once, as OpenAI counts it
    assert usage["completion_tokens"] == sum(len(t) for t in texts)  # every choice's tokens
    for n in (0, 17):
        r = chat(client, n=n)
        assert r.status_code == 400 and "n must be between 1 and 16" in r.json()["error"]["message"]


def test_n_choices_stream_with_their_indexes_and_one_usage(client: TestClient[Any]) -> None:
    r = chat(client, n=2, stream=True, seed=1, temperature=1.0, stream_options={"include_usage": True})
    events = sse(r.text)
    text: dict[int, str] = {0: "", 1: ""}
    finishes = {}
    for e in events[:-1]:
        (choice,) = e["choices"]
        text[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert finishes == {0: "stop", 1: "stop"} and text[0] and text[1] and text[0] != text[1]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == len(text[0] + text[1])
    assert sum(1 for e in events if e.get("usage")) == 1


@pytest.mark.fields(
    "openai.CompletionRequest.n",
    "openai.CompletionRequest.echo",
    "openai.CompletionRequest.stream_options",
    "openai.CompletionRequest.stream",
)
def test_completions_n_and_echo(client: TestClient[Any], harness: Harness) -> None:
    r = client.post(
        "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "Once upon",
            "n": 2,
            "echo": True,
            "seed": 5,
            "temperature": 1.0,
            "max_tokens": 6,
        },
    )
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert all(c["text"].startswith("Once upon") and len(c["text"]) == len("Once upon") + 6 for c in choices)
    r = client.post(
        "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "Once upon",
            "echo": True,
            "stream": True,
            "max_tokens": 3,
            "stream_options": {"include_usage": True},
        },
    )
    events = sse(r.text)
    assert events[0]["choices"][0]["text"].startswith("Once upon")
    assert events[-1]["usage"]["completion_tokens"] == 3
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "echo": True, "logprobs": 1})
    assert r.status_code == 400 and "echo with logprobs" in r.json()["error"]["message"]


# ---- tools -------------------------------------------------------------------------------------------
@pytest.mark.fields(
    "openai.ChatCompletionRequest.tool_choice",
    "openai.NamedToolChoice.type",
    "openai.NamedToolChoice.function",
    "openai.NamedFunction.name",
)
def test_tool_choice_required_and_named_force_a_call(client: TestClient[Any], harness: Harness) -> None:
    r = chat(client, model="tiny-tools", tools=[WEATHER, TIME], tool_choice="required")
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] in ("weather", "time")
    assert last_generate(harness).request.sampling.grammar  # type: ignore[union-attr]  # a grammar forced it
    r = chat(
        client,
        model="tiny-tools",
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "weather" and "city" in json.loads(call["function"]["arguments"])
    harness.fake.enqueue('<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>')
    r = chat(client, model="tiny-tools", tools=[WEATHER], tool_choice="none")
    message = r.json()["choices"][0]["message"]
    assert "tool_calls" not in message and "weather" not in last_generate(harness).text  # tools left out
    for bad, fragment in (
        ("sometimes", "invalid tool_choice"),
        ({"type": "function", "function": {"name": "nope"}}, "'nope'"),
        ({"type": "custom", "custom": {"name": "x"}}, "custom"),
    ):
        r = chat(client, model="tiny-tools", tools=[WEATHER], tool_choice=bad)
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text
    r = chat(client, tool_choice="required")
    assert r.status_code == 400 and "no tools" in r.json()["error"]["message"]


@pytest.mark.fields(
    "openai.NamedToolChoice.allowed_tools", "openai.AllowedTools.mode", "openai.AllowedTools.tools"
)
def test_tool_choice_allowed_tools_limits_the_tools(client: TestClient[Any], harness: Harness) -> None:
    allowed = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "time"}}]},
    }
    r = chat(client, model="tiny-tools", tools=[WEATHER, TIME], tool_choice=allowed)
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "time"
    assert "weather" not in last_generate(harness).text.split("assistant")[0]
    allowed["allowed_tools"]["mode"] = "often"
    r = chat(client, model="tiny-tools", tools=[WEATHER, TIME], tool_choice=allowed)
    assert r.status_code == 400 and "mode" in r.json()["error"]["message"]


@pytest.mark.fields("openai.ChatCompletionRequest.parallel_tool_calls")
def test_parallel_tool_calls_false_returns_one_call(client: TestClient[Any], harness: Harness) -> None:
    two = (
        '<tool_call>{"name": "weather", "arguments": {"city": "A"}}</tool_call>'
        '<tool_call>{"name": "weather", "arguments": {"city": "B"}}</tool_call>'
    )
    harness.fake.enqueue(two)
    calls = chat(client, model="tiny-tools", tools=[WEATHER]).json()["choices"][0]["message"]["tool_calls"]
    assert len(calls) == 2
    harness.fake.enqueue(two)
    calls = chat(client, model="tiny-tools", tools=[WEATHER], parallel_tool_calls=False).json()["choices"][0][
        "message"
    ]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "A"}]
    harness.fake.enqueue(two)
    r = chat(client, model="tiny-tools", tools=[WEATHER], parallel_tool_calls=False, stream=True)
    streamed = [c for e in sse(r.text) for ch in e["choices"] for c in ch["delta"].get("tool_calls", [])]
    assert len(streamed) == 1


@pytest.mark.fields(
    "openai.ToolDef.type",
    "openai.ToolDef.function",
    "openai.FunctionDef.name",
    "openai.FunctionDef.description",
    "openai.FunctionDef.parameters",
    "openai.ChatCompletionRequest.tools",
)
def test_tool_definitions_reach_the_template(client: TestClient[Any], harness: Harness) -> None:
    r = client.post(
        "/api/create",
        json={
            "model": "tiny-tooldoc",
            "from": "tiny",
            "stream": False,
            "template": (
                "{{ range .Tools }}[{{ .Function.Name }}: {{ .Function.Description }} "
                "{{ .Function.Parameters.Properties }}]{{ end }}"
                "{{ range .Messages }}{{ .Content }}{{ end }}<tool_call>"
            ),
        },
    )
    assert r.status_code == 200
    chat(client, model="tiny-tooldoc", tools=[WEATHER], max_tokens=1)
    assert "[weather: Weather now. map[city:" in last_generate(harness).text
    r = chat(client, model="tiny-tools", tools=[{"type": "web_search", "function": {"name": "w"}}])
    assert r.status_code == 400 and "tool type 'web_search'" in r.json()["error"]["message"]


@pytest.mark.fields("openai.FunctionDef.strict")
def test_strict_tools_are_guaranteed_or_refused(client: TestClient[Any], harness: Harness) -> None:
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    r = chat(client, model="tiny-tools", tools=[strict], tool_choice="required")
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    assert set(json.loads(call["function"]["arguments"])) == {"city"}  # held to the schema by a grammar
    r = chat(client, model="tiny-tools", tools=[strict])  # tool_choice auto: held once a call opens
    sampling = last_generate(harness).request.sampling
    assert r.status_code == 200 and sampling.json_schema is not None and sampling.json_schema.lazy
    assert sampling.grammar and sampling.json_schema.opener == "<tool_call>"
    r = chat(client, model="tiny-tools", tools=[WEATHER])  # not strict: free
    assert r.status_code == 200 and last_generate(harness).request.sampling.json_schema is None
    unexpressible = {
        "type": "function",
        "function": {
            "name": "f",
            "strict": True,
            "parameters": {"type": "object", "properties": {"x": {"type": "string", "pattern": "^(a|b)+$"}}},
        },
    }
    for choice in ("required", "auto"):
        r = chat(client, model="tiny-tools", tools=[unexpressible], tool_choice=choice)
        assert r.status_code == 400 and "cannot be enforced" in r.json()["error"]["message"], r.text


# ---- messages ----------------------------------------------------------------------------------------
@pytest.mark.fields(
    "openai.RequestMessage.tool_calls",
    "openai.RequestMessage.tool_call_id",
    "openai.RequestMessage.name",
    "openai.RequestToolCall.function",
    "openai.RequestToolCall.id",
    "openai.RequestToolCall.index",
    "openai.RequestToolCall.type",
    "openai.RequestFunctionCall.name",
    "openai.RequestFunctionCall.arguments",
    "openai.RequestMessage.reasoning",
    "openai.RequestMessage.reasoning_content",
    "openai.RequestMessage.refusal",
)
def test_history_fields_reach_the_template(client: TestClient[Any], harness: Harness) -> None:
    r = client.post(
        "/api/create",
        json={
            "model": "tiny-hist",
            "from": "tiny",
            "stream": False,
            "template": (
                "{{ range .Messages }}<{{ .Role }}>"
                "{{ if .Thinking }}(thought {{ .Thinking }}){{ end }}{{ .Content }}"
                "{{ range .ToolCalls }}(call {{ .Function.Index }} {{ .ID }} {{ .Function.Name }} "
                "{{ .Function.Arguments }}){{ end }}"
                "{{ if .ToolName }}(result of {{ .ToolName }} {{ .ToolCallID }})"
                "{{ end }}{{ end }}<assistant>"
            ),
        },
    )
    assert r.status_code == 200
    messages = [
        {"role": "user", "content": "Lima?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "check it",
            "tool_calls": [
                {
                    "id": "c9",
                    "type": "function",
                    "index": 2,
                    "function": {"name": "weather", "arguments": '{"city": "Lima"}'},
                }
            ],
        },
        {"role": "tool", "content": "22C", "tool_call_id": "c9", "name": "weather"},
        {"role": "assistant", "content": None, "refusal": "I cannot say more."},
        {"role": "assistant", "content": "", "reasoning": "pondering"},
        {"role": "user", "content": "ok"},
    ]
    r = chat(client, model="tiny-hist", messages=messages, max_tokens=1)
    assert r.status_code == 200, r.text
    seen = last_generate(harness).text
    assert "(thought check it)" in seen and '(call 2 c9 weather {"city":"Lima"})' in seen
    assert "(result of weather c9)" in seen and "I cannot say more." in seen and "(thought pondering)" in seen
    for bad, fragment in (
        ({"role": "user", "content": "x", "name": "bob"}, "name is supported on tool messages only"),
        ({"role": "assistant", "tool_calls": [{"type": "custom", "function": {"name": "f"}}]}, "'custom'"),
        (
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]},
            "JSON object",
        ),
        ({"role": "user", "refusal": "no"}, "refusal belongs to an assistant message"),
    ):
        r = chat(client, model="tiny-hist", messages=[bad, *USER])
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text


@pytest.mark.fields(
    "openai.ImageURL.detail",
    "openai.InputAudio.format",
    "openai.InputAudio.data",
    "openai.ContentPart.input_audio",
)
def test_media_detail_and_audio_format_are_checked(client: TestClient[Any], sample_png_url: str) -> None:
    def part(p: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "text", "text": "what?"}, p]}]

    for detail in ("auto", "high"):  # the projector's full resolution: what corral always gives the model
        r = chat(
            client,
            messages=part({"type": "image_url", "image_url": {"url": sample_png_url, "detail": detail}}),
        )
        assert r.status_code == 400 and "vision" in r.json()["error"]["message"]  # reached the model check
    r = chat(
        client, messages=part({"type": "image_url", "image_url": {"url": sample_png_url, "detail": "low"}})
    )
    assert r.status_code == 400 and "detail 'low'" in r.json()["error"]["message"]
    wav = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 28).decode()
    r = chat(client, messages=part({"type": "input_audio", "input_audio": {"data": wav, "format": "mp3"}}))
    assert r.status_code == 400 and "says mp3 but the data is wav" in r.json()["error"]["message"]
    r = chat(client, messages=part({"type": "input_audio", "input_audio": {"data": wav, "format": "ogg"}}))
    assert r.status_code == 400 and "'ogg' is not supported" in r.json()["error"]["message"]
    r = chat(client, messages=part({"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}))
    assert r.status_code == 400 and "audio" in r.json()["error"]["message"]  # tiny has no audio encoder
    r = chat(client, messages=part({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}))
    assert r.status_code == 400 and "input_audio needs data" in r.json()["error"]["message"]


# ---- response format, reasoning, logprobs ---------------------------------------------------------------
@pytest.mark.fields(
    "openai.ResponseFormat.json_schema",
    "openai.JSONSchemaFormat.schema",
    "openai.JSONSchemaFormat.name",
    "openai.JSONSchemaFormat.strict",
    "openai.JSONSchemaFormat.description",
)
def test_json_schema_response_format(client: TestClient[Any], harness: Harness) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    for strict in (True, False, None):  # corral always holds the answer to the schema, strict or not
        rf = {
            "type": "json_schema",
            "json_schema": {"name": "count_1", "description": "A count.", "schema": schema, "strict": strict},
        }
        r = chat(client, response_format=rf)
        content = r.json()["choices"][0]["message"]["content"]
        assert set(json.loads(content)) == {"n"}, content
    r = chat(
        client,
        response_format={"type": "json_schema", "json_schema": {"name": "bad name!", "schema": schema}},
    )
    assert r.status_code == 400 and "json_schema.name" in r.json()["error"]["message"]
    r = chat(client, response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert r.status_code == 400 and "schema is required" in r.json()["error"]["message"]


@pytest.mark.fields(
    "openai.ChatCompletionRequest.user", "openai.CompletionRequest.user", "openai.EmbeddingRequest.user"
)
def test_user_names_the_end_user_in_the_access_log(
    client: TestClient[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="corral.server.access"):
        chat(client, user="user-1234", max_tokens=1)
        client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "x", "user": "user-5678", "max_tokens": 1}
        )
        client.post("/v1/embeddings", json={"model": "tiny", "input": "x", "user": "user-9"})
    lines = [r.getMessage() for r in caplog.records if r.name == "corral.server.access"]
    assert any("/v1/chat/completions 200" in line and "user='user-1234'" in line for line in lines)
    assert any("/v1/completions 200" in line and "user='user-5678'" in line for line in lines)
    assert any("/v1/embeddings 200" in line and "user='user-9'" in line for line in lines)
    r = chat(client, user="x" * 300)
    assert r.status_code == 400 and "user must be" in r.json()["error"]["message"]


@pytest.mark.fields(
    "openai.ChatCompletionRequest._debug_render_only", "openai.CompletionRequest._debug_render_only"
)
def test_debug_render_only_on_v1(client: TestClient[Any], harness: Harness) -> None:
    before = len([c for c in harness.fake.history if c.op == "generate"])
    body = chat(client, _debug_render_only=True).json()
    info = body["_debug_info"]
    assert info["rendered_template"].endswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
    assert (
        body["usage"]["prompt_tokens"] == info["token_count"] > 0 and body["usage"]["completion_tokens"] == 0
    )
    body = client.post(
        "/v1/completions", json={"model": "tiny", "prompt": "hey", "_debug_render_only": True}
    ).json()
    assert "hey" in body["_debug_info"]["rendered_template"] and body["choices"][0]["text"] == ""
    assert len([c for c in harness.fake.history if c.op == "generate"]) == before


@pytest.mark.fields(
    "openai.ChatCompletionRequest.reasoning",
    "openai.Reasoning.effort",
    "openai.ChatCompletionRequest.reasoning_effort",
)
def test_reasoning_effort_turns_thinking(client: TestClient[Any], harness: Harness) -> None:
    harness.fake.enqueue("Hmm.</think>Yes.")
    r = chat(client, model="tiny-think", reasoning={"effort": "high"})
    message = r.json()["choices"][0]["message"]
    assert message["content"] == "Yes." and message["reasoning_content"] == "Hmm."
    r = chat(client, model="tiny-think", reasoning_effort="none", max_tokens=1)
    assert "<think>" not in last_generate(harness).text  # thinking off: the template opens no block
    r = chat(client, model="tiny-think", reasoning={"effort": "galactic"})
    assert r.status_code == 400 and "reasoning_effort" in r.json()["error"]["message"]


@pytest.mark.fields(
    "openai.CompletionRequest.logprobs",
    "openai.CompletionRequest.suffix",
    "openai.CompletionRequest.prompt",
    "openai.CompletionRequest.model",
)
def test_completion_logprobs_suffix_prompt(client: TestClient[Any], harness: Harness) -> None:
    r = client.post(
        "/v1/completions", json={"model": "tiny", "prompt": ["just one"], "logprobs": 2, "max_tokens": 3}
    )
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 3 and all(len(t) == 2 for t in lp["top_logprobs"])
    assert "just one" in last_generate(harness).text
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b"]})
    assert r.status_code == 400 and "exactly one string" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "def f(", "suffix": "return 1"})
    assert r.status_code == 400 and "does not support insert" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 400 and "model is required" in r.json()["error"]["message"]


@pytest.mark.fields(
    "openai.EmbeddingRequest.model",
    "openai.EmbeddingRequest.input",
    "openai.EmbeddingRequest.dimensions",
    "openai.EmbeddingRequest.encoding_format",
)
def test_embedding_fields(client: TestClient[Any]) -> None:
    r = client.post(
        "/v1/embeddings",
        json={"model": "tiny", "input": ["a", "b"], "dimensions": 4, "encoding_format": "float"},
    )
    data = r.json()["data"]
    assert len(data) == 2 and len(data[0]["embedding"]) == 4
    r = client.post("/v1/embeddings", json={"model": "tiny", "input": "a", "encoding_format": "base64"})
    assert isinstance(r.json()["data"][0]["embedding"], str)
    r = client.post("/v1/embeddings", json={"model": "tiny", "input": "a", "encoding_format": "hex"})
    assert r.status_code == 400 and "encoding_format" in r.json()["error"]["message"]
