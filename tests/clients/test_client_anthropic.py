"""The ``anthropic`` SDK (and Claude Code's request shape) against corral's /v1/messages (fake backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from client_support import Served, fake_server

USER = [{"role": "user", "content": "hello"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def _client(served: Served) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.url, api_key="corral", max_retries=0)


def _prompt(served: Served) -> str:
    return served.fake.history[-1].text if served.fake else ""


def test_create_stream_and_system(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("Hello from corral.")
    r = c.messages.create(model="tiny", max_tokens=64, system="Be brief.", messages=USER)  # type: ignore[arg-type]
    assert r.type == "message" and r.role == "assistant" and r.model == "tiny"
    assert [b.type for b in r.content] == ["text"] and r.content[0].text == "Hello from corral."  # type: ignore
    assert r.stop_reason == "end_turn" and r.stop_sequence is None and r.id.startswith("msg_")
    assert r.usage.output_tokens == len("Hello from corral.") and r.usage.input_tokens > 0
    assert "Be brief." in _prompt(served)
    served.fake.enqueue("streamed words arrive")
    deltas: list[str] = []
    with c.messages.stream(
        model="tiny",
        max_tokens=64,
        messages=USER,  # type: ignore[arg-type]
        system=[{"type": "text", "text": "Sys one."}, {"type": "text", "text": "Sys two."}],
    ) as s:
        for ev in s:
            if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                deltas.append(ev.delta.text)
        final = s.get_final_message()
    assert "".join(deltas) == "streamed words arrive" == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and len(deltas) > 1
    assert "Sys one.\n\nSys two." in _prompt(served)
    # input_tokens leaves out what was read from the cache (the fake reuses the common prefix)
    assert final.usage.cache_read_input_tokens and final.usage.cache_read_input_tokens > 0
    served.fake.enqueue("x")
    r2 = c.messages.create(model="tiny", max_tokens=8, system="Sys one.\n\nSys two.", messages=USER)  # type: ignore
    n = c.messages.count_tokens(model="tiny", messages=USER, system="Sys one.\n\nSys two.")  # type: ignore
    assert r2.usage.input_tokens + (r2.usage.cache_read_input_tokens or 0) == n.input_tokens


def test_max_tokens_and_stop_sequences(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("one two three four five")
    r = c.messages.create(model="tiny", max_tokens=5, messages=USER)  # type: ignore[arg-type]
    assert r.stop_reason == "max_tokens" and r.content[0].text == "one t"  # type: ignore[union-attr]
    served.fake.enqueue("one two three four five")
    r = c.messages.create(model="tiny", max_tokens=50, messages=USER, stop_sequences=["three"])  # type: ignore
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == "three"
    assert r.content[0].text == "one two "  # type: ignore[union-attr]


def test_tool_use_round_trip(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue(CALL)
    msgs: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    r = c.messages.create(model="tiny-tools", max_tokens=200, tools=[WEATHER], messages=msgs)  # type: ignore
    assert r.stop_reason == "tool_use"
    use = r.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    assert use.id.startswith("toolu_")
    msgs += [
        {"role": "assistant", "content": r.content},  # the SDK's own blocks, as its docs show
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": use.id,
                    "content": "18 C, sunny",
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ]
    served.fake.enqueue("It is 18 C and sunny in Paris.")
    r2 = c.messages.create(model="tiny-tools", max_tokens=200, tools=[WEATHER], messages=msgs)  # type: ignore
    assert r2.stop_reason == "end_turn" and r2.content[0].text == "It is 18 C and sunny in Paris."  # type: ignore
    prompt = _prompt(served)
    assert '"city": "Paris"' in prompt.replace('":"', '": "') and "tool: 18 C, sunny" in prompt
    # streamed: a tool_use block with its input as input_json_delta
    served.fake.enqueue(CALL)
    with c.messages.stream(model="tiny-tools", max_tokens=200, tools=[WEATHER], messages=msgs[:1]) as s:  # type: ignore
        events = [ev.type for ev in s]
        final = s.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].input == {"city": "Paris"}  # type: ignore
    assert events.count("content_block_stop") == len(final.content)


def test_tool_choice_forces_a_call(served: Served) -> None:
    c = _client(served)
    other = {**WEATHER, "name": "get_time", "input_schema": {"type": "object", "properties": {}}}
    for choice, names in (
        ({"type": "any"}, {"get_weather", "get_time"}),
        ({"type": "tool", "name": "get_time"}, {"get_time"}),
    ):
        r = c.messages.create(
            model="tiny-tools",
            max_tokens=200,
            tools=[WEATHER, other],  # type: ignore
            tool_choice=choice,
            messages=USER,
        )  # type: ignore[arg-type]
        assert r.stop_reason == "tool_use" and r.content[-1].name in names  # type: ignore[union-attr]
        assert served.fake.history[-1].request.sampling.grammar  # the fake sampled the tool-call grammar
    served.fake.enqueue("plain words")
    r = c.messages.create(
        model="tiny",
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[arg-type]
        tool_choice={"type": "none"},
        messages=USER,
    )  # type: ignore[arg-type]
    assert r.content[0].text == "plain words"  # type: ignore[union-attr]  # tiny has no tools: none drops them


def test_errors(served: Served) -> None:
    c = _client(served)
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="absent", max_tokens=8, messages=USER)  # type: ignore[arg-type]
    assert e.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as e2:
        c.messages.create(model="tiny", max_tokens=8, messages=USER, extra_body={"colour": "blue"})  # type: ignore
    assert "colour" in str(e2.value) and e2.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as e3:  # never a silently cut prompt
        c.messages.create(model="tiny", max_tokens=8, messages=[{"role": "user", "content": "word " * 1200}])
    assert "num_ctx" in str(e3.value)
    served.fake.enqueue("abcdef", error="broke mid-stream", error_after=2)
    with (
        pytest.raises(anthropic.APIStatusError) as e4,
        c.messages.stream(model="tiny", max_tokens=64, messages=USER) as s,
    ):  # type: ignore[arg-type]
        for _ in s:
            pass
    assert "broke mid-stream" in str(e4.value)


def test_claude_code_request_shape(served: Served) -> None:
    """What Claude Code sends (agent-clients.md), raw: query string, headers, its body fields, SSE events."""
    billing = "x-anthropic-billing-header: cc_version=2.1.197.123; cc_entrypoint=sdk-cli; cch=a5145;"
    body = {
        "model": "tiny-tools",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": billing},
            {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Work carefully.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "Say hi", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "Mid-conversation note."},
        ],
        "tools": [WEATHER],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})},
    }
    headers = {
        "anthropic-version": "2023-06-01",
        "accept": "application/json",
        "x-app": "cli",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "authorization": "Bearer ollama",
    }
    served.fake.enqueue("hi!")
    r = httpx.post(served.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    kinds = [e.split("\n", 1)[0].removeprefix("event: ") for e in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    delta = json.loads(events[-2].split("data: ", 1)[1])
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] == 3
    prompt = _prompt(served)
    assert "billing" not in prompt and "cch=" not in prompt  # the per-request stamp never reaches the prompt
    assert (
        prompt.index("You are a Claude agent.")
        < prompt.index("Say hi")
        < prompt.index("Mid-conversation note.")
    )


def test_api_key_as_x_api_key(tmp_path: Path, tiny_gguf: Path) -> None:
    srv = fake_server(tmp_path, tiny_gguf, api_key="s3cret")
    try:
        assert srv.fake is not None
        srv.fake.enqueue("fine")
        ok = anthropic.Anthropic(base_url=srv.url, api_key="s3cret", max_retries=0)  # sent as x-api-key
        r = ok.messages.create(model="tiny", max_tokens=8, messages=USER)  # type: ignore[arg-type]
        assert r.content[0].text == "fine"  # type: ignore[union-attr]
        bad = anthropic.Anthropic(base_url=srv.url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as e:
            bad.messages.create(model="tiny", max_tokens=8, messages=USER)  # type: ignore[arg-type]
        assert e.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    finally:
        srv.stop()


def test_pings_while_the_first_token_is_slow(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.server.anthropic import routes

    monkeypatch.setattr(routes, "FIRST_CHUNK_GRACE", 0.05)
    monkeypatch.setattr(routes, "PING_EVERY", 0.1)
    served.fake.enqueue("ok", delay=0.5)  # half a second before the first token, as a long prompt would take
    r = httpx.post(
        served.url + "/v1/messages",
        json={"model": "tiny", "max_tokens": 8, "stream": True, "messages": USER},
        timeout=30,
    )
    kinds = [e.split("\n", 1)[0].removeprefix("event: ") for e in r.text.split("\n\n") if e]
    assert kinds[0] == "message_start" and kinds[1] == "ping" and kinds[-1] == "message_stop"
    assert kinds.index("content_block_start") > kinds.index("ping")
