"""The official ``ollama`` Python client, sync and async, against a live corral server (fake backend)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import ollama
import pytest
from client_support import Served

from corral.testing.registry import TestRegistry

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "required": ["city"],
                                                          "properties": {"city": {"type": "string"}}}}}]


def test_generate_and_chat_sync(served: Served) -> None:
    c = ollama.Client(host=served.url)
    served.fake.enqueue("Paris is the capital.")
    r = c.generate(model="tiny", prompt="capital of France?")
    assert r.response == "Paris is the capital." and r.done and r.done_reason == "stop"
    assert r.eval_count == len("Paris is the capital.") and r.context and r.total_duration > 0
    parts = list(c.generate(model="tiny", prompt="hello", stream=True, options={"num_predict": 5}))
    assert len(parts) == 6 and parts[-1].done and parts[-1].done_reason == "length"
    assert len("".join(p.response for p in parts)) == 5

    served.fake.enqueue("Hi there")
    r = c.chat(model="tiny", messages=[{"role": "user", "content": "hello"}])
    assert r.message.role == "assistant" and r.message.content == "Hi there" and r.done
    served.fake.enqueue("Streamed reply")
    parts = list(c.chat(model="tiny", messages=[{"role": "user", "content": "hello"}], stream=True))
    assert "".join(p.message.content or "" for p in parts) == "Streamed reply" and parts[-1].done


def test_streamed_preload_with_load_progress_lines_parses(served: Served) -> None:
    """corral's load progress lines (before a load-only request's last line) are chunks the client reads
    (it drops their status/completed/total, fields its models do not have) with nothing in them."""
    c = ollama.Client(host=served.url)
    for call in (lambda: c.chat(model="tiny", messages=[], stream=True),
                 lambda: c.generate(model="tiny", prompt="", stream=True)):
        c.generate(model="tiny", keep_alive=0)  # unloaded: the next request loads it
        *loading, last = list(call())
        assert loading and all(not p.done and not p.done_reason for p in loading)
        assert all(not (p.message.content if "message" in p else p.response) for p in loading)
        assert last.done and last.done_reason == "load"


def test_errors_become_response_errors(served: Served) -> None:
    c = ollama.Client(host=served.url)
    with pytest.raises(ollama.ResponseError) as e:
        c.generate(model="not-here", prompt="x")
    assert e.value.status_code == 404 and "not found" in e.value.error
    served.fake.enqueue("abcdef", error="went wrong mid-stream", error_after=2)
    with pytest.raises(ollama.ResponseError) as e:
        list(c.generate(model="tiny", prompt="x", stream=True))
    assert e.value.status_code == -1 and e.value.error == "went wrong mid-stream"
    with pytest.raises(ollama.ResponseError) as e:
        c.generate(model="tiny", prompt="x", logprobs=True, top_logprobs=50)
    assert e.value.status_code == 400 and "top_logprobs must be between 0 and 20" in e.value.error


def test_embed_list_show_ps(served: Served) -> None:
    c = ollama.Client(host=served.url)
    e = c.embed(model="tiny", input=["one", "two"])
    assert len(e.embeddings) == 2 and abs(sum(x * x for x in e.embeddings[0]) - 1) < 1e-4
    assert len(c.embeddings(model="tiny", prompt="one").embedding) == len(e.embeddings[0])
    names = {m.model for m in c.list().models}
    assert {"tiny:latest", "tiny-tools:latest"} <= names
    s = c.show("tiny")
    assert s.modelinfo is not None and s.modelinfo["general.architecture"] == "llama"
    assert s.details.family == "llama" and "completion" in (s.capabilities or [])
    running = c.ps().models
    assert any(m.model == "tiny:latest" and m.expires_at is not None for m in running)


def test_create_copy_delete_and_blobs(served: Served, tiny_gguf: Path) -> None:
    c = ollama.Client(host=served.url)
    digest = c.create_blob(tiny_gguf)
    assert digest == "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    r = c.create(model="client-made", files={"tiny.gguf": digest}, system="Be brief.",
                 parameters={"temperature": 0.2})
    assert r.status == "success"
    steps = [p.status for p in c.create(model="client-made2", from_="client-made", stream=True)]
    assert steps[-1] == "success"
    assert c.copy("client-made", "client-copy").status == "success"
    names = {m.model for m in c.list().models}
    assert {"client-made:latest", "client-made2:latest", "client-copy:latest"} <= names
    assert "Be brief." in (c.show("client-copy").modelfile or "")
    for name in ("client-copy", "client-made2", "client-made"):
        assert c.delete(name).status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        c.delete("client-made")
    assert e.value.status_code == 404


def test_pull_from_the_in_process_registry(served: Served, tiny_gguf: Path) -> None:
    c = ollama.Client(host=served.url)
    with TestRegistry() as reg:
        reg.add_model("library/remote:v2", [("application/vnd.ollama.image.model", tiny_gguf.read_bytes())])
        name = f"{reg.host}/library/remote:v2"
        statuses = [p.status for p in c.pull(name, insecure=True, stream=True)]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert c.pull(name, insecure=True).status == "success"  # again: already there
    assert name in {m.model for m in c.list().models}
    r = c.generate(model=name, prompt="hi", options={"num_predict": 2})
    assert r.eval_count == 2


def test_tool_call_thinking_and_logprobs(served: Served) -> None:
    c = ollama.Client(host=served.url)
    served.fake.enqueue('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    r = c.chat(model="tiny-tools", messages=[{"role": "user", "content": "weather in Oslo?"}], tools=TOOLS)
    (call,) = r.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Oslo"}
    served.fake.enqueue("Let me consider.</think>It is 4.")
    r = c.chat(model="tiny-think", messages=[{"role": "user", "content": "2+2?"}], think=True)
    assert r.message.thinking == "Let me consider." and r.message.content == "It is 4."
    r = c.generate(model="tiny", prompt="hi", logprobs=True, top_logprobs=3, options={"num_predict": 4})
    assert r.logprobs is not None and len(r.logprobs) == 4
    assert all(isinstance(lp.token, str) and lp.logprob <= 0 and len(lp.top_logprobs or []) == 3
               for lp in r.logprobs)


def test_async_client(served: Served) -> None:
    async def main() -> None:
        c = ollama.AsyncClient(host=served.url)
        served.fake.enqueue("async hello", match="ping")
        r = await c.generate(model="tiny", prompt="ping")
        assert r.response == "async hello"
        chunks = [p async for p in await c.chat(model="tiny", stream=True, options={"num_predict": 4},
                                                messages=[{"role": "user", "content": "x"}])]
        assert chunks[-1].done and len("".join(p.message.content or "" for p in chunks)) == 4
        many = await asyncio.gather(*(c.generate(model="tiny", prompt=f"n{i}", options={"num_predict": 3})
                                      for i in range(4)))
        assert all(m.eval_count == 3 for m in many)
        e = await c.embed(model="tiny", input="x")
        assert len(e.embeddings) == 1
        assert (await c.list()).models and (await c.ps()).models is not None
        with pytest.raises(ollama.ResponseError):
            await c.show("nope")

    asyncio.run(main())
