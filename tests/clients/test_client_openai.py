"""The ``openai`` SDK against corral's /v1 (fake backend): chat, completions, embeddings, models."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest
from client_support import Served

USER = [{"role": "user", "content": "hello"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                           "parameters": {"type": "object", "required": ["word"],
                                                          "properties": {"word": {"type": "string"}}}}}]


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1/", api_key="corral", max_retries=0)


def test_chat_non_stream_and_stream_with_usage(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("Hello from corral.")
    r = c.chat.completions.create(model="tiny", messages=USER)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "Hello from corral." and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens == len("Hello from corral.")
    served.fake.enqueue("streaming works")
    chunks = list(c.chat.completions.create(model="tiny", messages=USER, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "streaming works"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len("streaming works")


def test_completions(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("done.")
    r = c.completions.create(model="tiny", prompt="Say done", max_tokens=10)
    assert r.choices[0].text == "done." and r.object == "text_completion"
    chunks = list(c.completions.create(model="tiny", prompt="x", max_tokens=3, stream=True))
    assert len("".join(ch.choices[0].text for ch in chunks if ch.choices)) == 3
    assert chunks[-1].choices[0].finish_reason == "length"


def test_embeddings_sdk_default_base64_and_float(served: Served) -> None:
    c = _client(served)
    r = c.embeddings.create(model="tiny", input=["alpha", "beta"])  # SDK asks for base64
    v = np.asarray(r.data[0].embedding, dtype=np.float32)
    assert len(r.data) == 2 and v.ndim == 1 and abs(float(np.linalg.norm(v)) - 1) < 1e-3
    f = c.embeddings.create(model="tiny", input="alpha", encoding_format="float")
    assert np.allclose(f.data[0].embedding, v, atol=1e-6)
    assert r.usage.prompt_tokens > 0


def test_models_list_and_retrieve(served: Served) -> None:
    c = _client(served)
    ids = {m.id for m in c.models.list()}
    assert "tiny:latest" in ids
    m = c.models.retrieve("tiny:latest")
    assert m.id == "tiny:latest" and m.owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("absent:latest")


def test_errors(served: Served) -> None:
    c = _client(served)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="absent", messages=USER)  # type: ignore[arg-type]
    assert "not found" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=USER, top_logprobs=30, logprobs=True)  # type: ignore
    served.fake.enqueue("abcdef", error="broke mid-stream", error_after=2)
    with pytest.raises(openai.APIError) as e2:
        list(c.chat.completions.create(model="tiny", messages=USER, stream=True))  # type: ignore[arg-type]
    assert "broke mid-stream" in str(e2.value)


def test_tool_calls_reasoning_and_logprobs(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue('<tool_call>{"name": "lookup", "arguments": {"word": "corral"}}</tool_call>')
    r = c.chat.completions.create(model="tiny-tools", messages=USER, tools=TOOLS)  # type: ignore[arg-type]
    (call,) = r.choices[0].message.tool_calls or []
    assert r.choices[0].finish_reason == "tool_calls" and call.id.startswith("call_")
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"word": "corral"}
    served.fake.enqueue('<tool_call>{"name": "lookup", "arguments": {"word": "pen"}}</tool_call>')
    chunks = list(c.chat.completions.create(model="tiny-tools", messages=USER, tools=TOOLS,  # type: ignore
                                            stream=True))
    calls = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and json.loads(calls[0].function.arguments) == {"word": "pen"}  # emitted whole
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"

    served.fake.enqueue("Thinking hard.</think>Four.")
    r = c.chat.completions.create(model="tiny-think", messages=USER, reasoning_effort="low")  # type: ignore
    extra = r.choices[0].message.model_extra or {}
    assert r.choices[0].message.content == "Four." and extra["reasoning_content"] == "Thinking hard."

    r = c.chat.completions.create(model="tiny", messages=USER, max_tokens=3, logprobs=True,  # type: ignore
                                  top_logprobs=2)
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 3
    assert all(len(t.top_logprobs) == 2 and t.bytes for t in content)


def test_strict_tools_with_tool_choice_auto(served: Served) -> None:
    """OpenAI ``strict`` with tool_choice auto (the Agents SDK's default): free text is left alone and a
    call the model opens is held to the tool's schema (the fake backend honours the lazy constraint:
    its scripted call with a wrong argument comes out fitted to the schema)."""
    c = _client(served)
    strict = [{"type": "function", "function": {**TOOLS[0]["function"], "strict": True}}]
    served.fake.enqueue("No lookup needed.")
    r = c.chat.completions.create(model="tiny-tools", messages=USER, tools=strict)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "No lookup needed." and not r.choices[0].message.tool_calls
    served.fake.enqueue('<tool_call>{"name": "lookup", "arguments": {"term": 7}}</tool_call>')
    r = c.chat.completions.create(model="tiny-tools", messages=USER, tools=strict,  # type: ignore[arg-type]
                                  tool_choice="auto")
    (call,) = r.choices[0].message.tool_calls or []
    args = json.loads(call.function.arguments)
    assert call.function.name == "lookup" and isinstance(args.get("word"), str), args
    sampling = [h for h in served.fake.history if h.op == "generate"][-1].request.sampling
    assert sampling.json_schema is not None and sampling.json_schema.lazy
    assert sampling.json_schema.opener == "<tool_call>"
