"""Wire tests of the OpenAI-compatible API (/v1/*) over the fake backend."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from litestar.testing import TestClient
from server_support import Harness, sse

USER = [{"role": "user", "content": "hello"}]


@pytest.mark.fields("openai.ChatCompletionRequest.model", "openai.ChatCompletionRequest.messages",
                    "openai.RequestMessage.role", "openai.RequestMessage.content")
def test_chat_completion_non_stream(client: TestClient[Any], harness: Harness) -> None:
    harness.fake.enqueue("Hello back.")
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int) and body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello back."}
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    u = body["usage"]
    assert u["completion_tokens"] == len("Hello back.") and u["total_tokens"] == u["prompt_tokens"] + 11


@pytest.mark.fields("openai.ChatCompletionRequest.stream", "openai.ChatCompletionRequest.stream_options",
                    "openai.StreamOptions.include_usage")
def test_chat_completion_stream_shape(client: TestClient[Any], harness: Harness) -> None:
    harness.fake.enqueue("abc")
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert len({e["id"] for e in events}) == 1 and len({e["created"] for e in events}) == 1
    first, *middle, finish, usage = events
    assert first["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in [first, *middle])
    assert text == "abc"
    assert all(e["choices"][0]["finish_reason"] is None for e in [first, *middle])
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3


@pytest.mark.fields("openai.ChatCompletionRequest.max_tokens")
def test_chat_stream_without_usage_and_length_finish(client: TestClient[Any]) -> None:
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, "stream": True,
                                                  "max_tokens": 2})
    events = sse(r.text)
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events)


@pytest.mark.fields("openai.ChatCompletionRequest.stop", "openai.ChatCompletionRequest.temperature",
                    "openai.ChatCompletionRequest.top_p", "openai.ChatCompletionRequest.frequency_penalty",
                    "openai.ChatCompletionRequest.presence_penalty")
def test_v1_fields_become_options(client: TestClient[Any], harness: Harness) -> None:
    r = client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": USER, "max_tokens": 3, "seed": 7, "stop": ["zz"], "temperature": 0.5,
        "top_p": 0.5, "frequency_penalty": 0.25, "presence_penalty": 0.5, "tool_choice": "auto", "n": 1})
    assert r.status_code == 200
    req = harness.fake.history[-1].request
    assert req is not None and req.num_predict == 3 and "zz" in req.stop
    s = req.sampling
    got = (s.seed, s.temperature, s.top_p, s.frequency_penalty, s.presence_penalty)
    assert got == (7, 0.5, 0.5, 0.25, 0.5)
    # compat(ollama): temperature and top_p default to 1.0 on /v1
    client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, "max_tokens": 1})
    s = harness.fake.history[-1].request.sampling  # type: ignore[union-attr]
    assert (s.temperature, s.top_p) == (1.0, 1.0)


@pytest.mark.fields("openai.ContentPart.type", "openai.ContentPart.text")
def test_content_parts_and_developer_role(client: TestClient[Any], harness: Harness) -> None:
    msgs = [{"role": "developer", "content": "be terse"},
            {"role": "user", "content": [{"type": "text", "text": "part one"},
                                         {"type": "text", "text": "two"}]}]
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": msgs, "max_tokens": 1})
    assert r.status_code == 200
    seen = harness.fake.history[-1].text
    assert "be terse" in seen and "part one" in seen and "two" in seen
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": bad})
    assert r.status_code == 400 and "data URI" in r.json()["error"]["message"]


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"model": "tiny", "messages": []}, 400, "too short"),
    ({"model": "nope", "messages": USER}, 404, "not found"),
    ({"model": "tiny", "messages": USER, "top_logprobs": 25}, 400, "top_logprobs must be between 0 and 20"),
    ({"model": "tiny", "messages": USER, "reasoning_effort": "enormous"}, 400, "reasoning_effort"),
    ({"model": "tiny", "messages": USER, "response_format": {"type": "xml"}}, 400, "response_format"),
    ({"model": "tiny", "messages": "hi"}, 400, "'messages'"),
    ({"model": "tiny", "messages": USER, "n": 17}, 400, "n must be between 1 and 16"),
    ({"model": "tiny", "messages": USER, "stop": ["s"] * 10000}, 400, "stop"),
    ({"model": "tiny", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     400, "invalid tool call arguments"),
])
def test_chat_errors_use_openai_envelope(client: TestClient[Any], body: dict[str, Any], status: int,
                                         fragment: str) -> None:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and fragment in err["message"]
    assert err["type"] == {400: "invalid_request_error", 404: "not_found_error"}[status]


def test_error_mid_stream_is_an_sse_error_event(client: TestClient[Any], harness: Harness) -> None:
    harness.fake.enqueue("abcdef", error="decode failed", error_after=2)
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, "stream": True})
    assert r.status_code == 200
    events = sse(r.text)
    assert events[-1]["error"]["message"] == "decode failed" and events[-1]["error"]["type"] == "api_error"


@pytest.mark.fields("openai.ChatCompletionRequest.logprobs", "openai.ChatCompletionRequest.top_logprobs")
def test_logprobs_on_chat_and_completions(client: TestClient[Any]) -> None:
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, "max_tokens": 3,
                                                  "logprobs": True, "top_logprobs": 2})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    assert all({"token", "logprob", "bytes", "top_logprobs"} <= set(c) and len(c["top_logprobs"]) == 2
               for c in content)
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3, "logprobs": 1})
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    assert lp["text_offset"] == [0, 1, 2]


def test_completions_stream_and_non_stream(client: TestClient[Any], harness: Harness) -> None:
    harness.fake.enqueue("xyz")
    body = client.post("/v1/completions", json={"model": "tiny", "prompt": "say"}).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "xyz" and body["choices"][0]["finish_reason"] == "stop"
    harness.fake.enqueue("xyz")
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "say", "stream": True,
                                             "stream_options": {"include_usage": True}})
    events = sse(r.text)
    assert "".join(c["text"] for e in events for c in e["choices"]) == "xyz"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2, 3]})
    assert r.status_code == 400


def test_embeddings_float_and_base64(client: TestClient[Any]) -> None:
    f = client.post("/v1/embeddings", json={"model": "tiny", "input": ["a", "b"]}).json()
    assert f["object"] == "list" and [d["index"] for d in f["data"]] == [0, 1]
    assert f["usage"]["prompt_tokens"] > 0 and f["usage"]["total_tokens"] == f["usage"]["prompt_tokens"]
    b = client.post("/v1/embeddings", json={"model": "tiny", "input": ["a", "b"],
                                           "encoding_format": "BASE64"}).json()
    raw = base64.b64decode(b["data"][0]["embedding"])
    vec = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert vec == pytest.approx(f["data"][0]["embedding"], abs=1e-6)
    r = client.post("/v1/embeddings", json={"model": "tiny", "input": "a", "encoding_format": "hex"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_models_list_and_get(client: TestClient[Any]) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    ids = {m["id"] for m in data["data"]}
    assert "tiny:latest" in ids
    m = next(m for m in data["data"] if m["id"] == "tiny:latest")
    assert m["object"] == "model" and m["owned_by"] == "library" and isinstance(m["created"], int)
    assert client.get("/v1/models/tiny:latest").json()["id"] == "tiny:latest"
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_tool_calls_on_v1_are_json_strings(client: TestClient[Any], harness: Harness) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    harness.fake.enqueue('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')
    r = client.post("/v1/chat/completions", json={"model": "tiny-tools", "messages": USER, "tools": tools})
    choice = r.json()["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and call["type"] == "function"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"} and call["id"].startswith("call_")


@pytest.mark.fields("openai.ChatCompletionRequest.response_format", "openai.ResponseFormat.type")
def test_response_format_reaches_the_sampler(client: TestClient[Any], harness: Harness) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}})
    assert r.status_code == 200
    assert json.loads(r.json()["choices"][0]["message"]["content"])["ok"] in (True, False)
    assert harness.fake.history[-1].request.sampling.grammar  # type: ignore[union-attr]
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER,
                                                  "response_format": {"type": "json_object"}})
    assert r.status_code == 200 and harness.fake.history[-1].request.sampling.grammar  # type: ignore[union-attr]
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER,
                                                  "response_format": {"type": "json_schema"}})
    assert r.status_code == 400 and "schema is required" in r.json()["error"]["message"]
