"""Every field of a /v1/messages (and count_tokens) request has its effect or a 400 naming it, through
the ``anthropic`` SDK (or raw HTTP for what the SDK will not send) on the fake backend.

Each test claims the fields it shows with ``@pytest.mark.fields`` (see tests/test_request_fields.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anthropic
import httpx
import pytest
from client_support import Served, access_logged

from corral.testing.fake import FakeCall

USER = [{"role": "user", "content": "hello"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
EPHEMERAL = {"type": "ephemeral"}


def _client(served: Served) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.url, api_key="corral", max_retries=0)


def _last(served: Served) -> FakeCall:
    return [c for c in served.fake.history if c.op == "generate"][-1]


def _post(served: Served, path: str = "/v1/messages", **body: Any) -> httpx.Response:
    base = {"model": "tiny", "messages": USER} | ({"max_tokens": 16} if path == "/v1/messages" else {})
    return httpx.post(served.url + path, json={**base, **body}, timeout=30)


def _refused(r: httpx.Response, *fragments: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert all(f in body["error"]["message"] for f in fragments), body


@pytest.mark.fields(
    "anthropic.MessagesRequest.model",
    "anthropic.MessagesRequest.messages",
    "anthropic.MessagesRequest.system",
    "anthropic.MessagesRequest.stream",
    "anthropic.MessagesRequest.max_tokens",
    "anthropic.MessagesRequest.stop_sequences",
    "anthropic.InputMessage.role",
    "anthropic.InputMessage.content",
    "anthropic.TextBlock.text",
    "anthropic.TextBlock.citations",
    "anthropic.TextBlock.cache_control",
)
def test_model_messages_system_and_limits(served: Served) -> None:
    c = _client(served)
    with pytest.raises(anthropic.NotFoundError):
        c.messages.create(model="absent", max_tokens=8, messages=USER)  # type: ignore[arg-type]
    served.fake.enqueue("ok")
    r = c.messages.create(
        model="tiny-tools",
        max_tokens=16,
        system=[{"type": "text", "text": "Sys.", "cache_control": EPHEMERAL}],
        messages=[  # type: ignore[list-item]
            {"role": "user", "content": [{"type": "text", "text": "First.", "citations": []}]},
            {"role": "assistant", "content": "Earlier."},
            {"role": "system", "content": "Mid-conversation rule."},  # Claude Code's beta
            {"role": "user", "content": "Second."},
        ],
    )
    assert r.content[0].text == "ok"  # type: ignore[union-attr]
    prompt = _last(served).text
    assert prompt.index("Sys.") < prompt.index("First.") < prompt.index("Earlier.") < prompt.index("Second.")
    assert "system: Mid-conversation rule." in prompt
    served.fake.enqueue("one two three")
    events = [e.type for e in c.messages.create(model="tiny", max_tokens=5, messages=USER,  # type: ignore
                                               stream=True, stop_sequences=["zz"])]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    request = _last(served).request
    assert request is not None and request.num_predict == 5 and "zz" in request.stop
    _refused(_post(served, max_tokens=0), "max_tokens")
    _refused(_post(served, messages=[]), "at least one message")
    _refused(_post(served, messages=[{"role": "tool", "content": "x"}]), "role must be")
    cited = {"type": "text", "text": "x", "citations": [{"type": "char_location", "cited_text": "x"}]}
    _refused(_post(served, messages=[{"role": "user", "content": [cited]}]), "citations")


@pytest.mark.fields(
    "anthropic.MessagesRequest.temperature",
    "anthropic.MessagesRequest.top_p",
    "anthropic.MessagesRequest.top_k",
)
def test_sampling_fields_reach_the_sampler(served: Served) -> None:
    r = _post(served, temperature=0.2, top_p=0.7, top_k=9)
    assert r.status_code == 200, r.text
    s = _last(served).request.sampling  # type: ignore[union-attr]
    assert (s.temperature, s.top_p, s.top_k) == (0.2, 0.7, 9)
    _refused(_post(served, top_k=-1), "top_k")


@pytest.mark.fields(
    "anthropic.ImageBlock.source",
    "anthropic.ImageBlock.cache_control",
    "anthropic.ImageSource.type",
    "anthropic.ImageSource.media_type",
    "anthropic.ImageSource.data",
    "anthropic.ImageSource.url",
)
def test_image_blocks(served: Served) -> None:
    def image(**source: Any) -> list[dict[str, Any]]:
        base64 = {"type": "base64", "media_type": "image/png", "data": PNG, **source}
        block = {"type": "image", "source": base64, "cache_control": EPHEMERAL}
        return [{"role": "user", "content": [block, {"type": "text", "text": "what?"}]}]

    # the image reaches the engine, which refuses it for a model without a projector: never dropped
    _refused(_post(served, messages=image()), "does not support vision")
    _refused(_post(served, messages=image(media_type="image/jpeg")), "does not match the image data (png)")
    _refused(_post(served, messages=image(media_type="text/plain")), "media_type")
    _refused(_post(served, messages=image(data="not base64!")), "image.source.data")
    url = [{"role": "user", "content": [{"type": "image", "source": {"type": "url",
                                                                      "url": "https://example.com/a.png"}}]}]
    _refused(_post(served, messages=url), "source type 'url'")


@pytest.mark.fields(
    "anthropic.MessagesRequest.tools",
    "anthropic.MessagesRequest.tool_choice",
    "anthropic.ToolDef.name",
    "anthropic.ToolDef.description",
    "anthropic.ToolDef.input_schema",
    "anthropic.ToolDef.type",
    "anthropic.ToolDef.strict",
    "anthropic.ToolDef.cache_control",
    "anthropic.ToolChoice.type",
    "anthropic.ToolChoice.name",
    "anthropic.ToolChoice.disable_parallel_tool_use",
)
def test_tools_tool_choice_and_strict(served: Served) -> None:
    c = _client(served)
    other = {"name": "get_time", "description": "Now", "input_schema": {"type": "object", "properties": {}},
             "cache_control": EPHEMERAL}
    served.fake.enqueue("words")
    c.messages.create(model="tiny-tools", max_tokens=32, messages=USER, tools=[WEATHER, other])  # type: ignore
    assert "Tools: get_weather get_time \n" in _last(served).text
    r = c.messages.create(model="tiny-tools", max_tokens=64, messages=USER,  # type: ignore[arg-type]
                          tools=[WEATHER, other], tool_choice={"type": "tool", "name": "get_time"})  # type: ignore
    assert r.content[-1].type == "tool_use" and r.content[-1].name == "get_time"  # type: ignore[union-attr]
    served.fake.enqueue("words")
    c.messages.create(model="tiny-tools", max_tokens=32, messages=USER, tools=[WEATHER],  # type: ignore
                      tool_choice={"type": "none"})
    assert "Tools:" not in _last(served).text
    two = CALL + CALL.replace("Paris", "Rome")
    for single, count in ((False, 2), (True, 1)):
        served.fake.enqueue(two)
        r = c.messages.create(model="tiny-tools", max_tokens=200, messages=USER, tools=[WEATHER],  # type: ignore
                              tool_choice={"type": "auto", "disable_parallel_tool_use": single})
        assert [b.type for b in r.content].count("tool_use") == count
    strict = {**WEATHER, "strict": True}
    r = c.messages.create(model="tiny-tools", max_tokens=200, messages=USER, tools=[strict],  # type: ignore
                          tool_choice={"type": "any"})
    assert set(r.content[-1].input) == {"city"}  # type: ignore[union-attr]  # held to the schema by a grammar
    served.fake.enqueue('<tool_call>{"name": "get_weather", "arguments": {"town": 3}}</tool_call>')
    r = c.messages.create(model="tiny-tools", max_tokens=200, messages=USER, tools=[strict])  # type: ignore
    assert set(r.content[-1].input) >= {"city"}  # type: ignore[union-attr]  # auto: held once a call opens
    assert _last(served).request.sampling.json_schema.lazy  # type: ignore[union-attr]
    pattern = {**WEATHER, "strict": True, "input_schema": {"type": "object", "properties": {
        "city": {"type": "string", "pattern": "^(a|b)+$"}}}}
    _refused(_post(served, model="tiny-tools", tools=[pattern]), "cannot be enforced")
    _refused(_post(served, model="tiny-tools", tools=[{**WEATHER, "type": "bash_20250124"}]), "bash_20250124")
    _refused(_post(served, model="tiny-tools", tools=[WEATHER], tool_choice={"type": "tool"}), "name")
    _refused(_post(served, model="tiny-tools", tools=[WEATHER], tool_choice={"type": "some"}), "tool_choice")


@pytest.mark.fields(
    "anthropic.ToolUseBlock.id",
    "anthropic.ToolUseBlock.name",
    "anthropic.ToolUseBlock.input",
    "anthropic.ToolUseBlock.cache_control",
    "anthropic.ToolUseBlock.caller",
    "anthropic.ToolUseBlock.toolset_name",
    "anthropic.ToolResultBlock.tool_use_id",
    "anthropic.ToolResultBlock.content",
    "anthropic.ToolResultBlock.is_error",
    "anthropic.ToolResultBlock.cache_control",
    "anthropic.ThinkingBlock.thinking",
    "anthropic.ThinkingBlock.signature",
    "anthropic.ThinkingBlock.cache_control",
)
def test_replayed_tool_use_tool_result_and_thinking(served: Served) -> None:
    """What a client sends back: its earlier turns' blocks (ids, signatures, callers: bookkeeping that
    corral takes as sent) become the assistant's calls and thinking and the tool turns."""
    made = httpx.post(served.url + "/api/create", timeout=30, json={
        "model": "tiny-replay-anthropic", "from": "tiny", "stream": False,
        "template": "{{ range .Messages }}{{ .Role }}: {{ .Thinking }}|{{ .Content }}"
                    "{{ range .ToolCalls }}<call {{ .Function.Name }} {{ .Function.Arguments }}>{{ end }}"
                    "\n{{ end }}"})
    assert made.status_code == 200, made.text
    served.fake.enqueue("done")
    r = _post(served, model="tiny-replay-anthropic", max_tokens=16, messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Use the tool.", "signature": "sig", "cache_control": EPHEMERAL},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"},
             "caller": {"type": "direct"}, "toolset_name": "weather", "cache_control": EPHEMERAL},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C", "cache_control": EPHEMERAL},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "timeout"}]}]},
    ])
    assert r.status_code == 200, r.text
    prompt = _last(served).text
    assert 'assistant: Use the tool.|<call get_weather {"city":"Oslo"}>' in prompt
    assert "tool: |18 C\n" in prompt and "tool: |Error: timeout\n" in prompt
    use = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    _refused(_post(served, messages=[{"role": "user", "content": [use]}]), "tool_use blocks belong")
    result = {"type": "tool_result", "tool_use_id": "t", "content": "x"}
    _refused(_post(served, messages=[{"role": "assistant", "content": [result]}]), "tool_result blocks")


@pytest.mark.fields(
    "anthropic.MessagesRequest.thinking",
    "anthropic.MessagesRequest.output_config",
    "anthropic.ThinkingConfig.type",
    "anthropic.ThinkingConfig.budget_tokens",
    "anthropic.ThinkingConfig.display",
    "anthropic.OutputConfig.effort",
    "anthropic.OutputConfig.format",
    "anthropic.OutputFormat.type",
    "anthropic.OutputFormat.schema",
)
def test_thinking_effort_and_output_format(served: Served) -> None:
    c = _client(served)

    def think(**body: Any) -> tuple[bool, Any]:
        served.fake.enqueue("Hmm.</think>Four.")
        r = c.messages.create(model="tiny-think", max_tokens=64, messages=USER, **body)  # type: ignore
        return "<think>" in _last(served).text, r.content

    on, blocks = think(thinking={"type": "enabled", "budget_tokens": 2048})
    assert on and blocks[0].type == "thinking" and blocks[0].thinking == "Hmm."
    assert think(thinking={"type": "disabled"})[0] is False
    assert think(thinking={"type": "adaptive"}, output_config={"effort": "low"})[0] is True
    assert think(thinking={"type": "adaptive"})[0] is True  # no effort: a model that can think does
    on, blocks = think(thinking={"type": "enabled", "budget_tokens": 2048, "display": "omitted"})
    assert on and blocks[0].type == "thinking" and blocks[0].thinking == ""  # the model thought; not shown
    served.fake.enqueue("Hmm.</think>Four.")
    streamed = _post(served, model="tiny-think", stream=True, max_tokens=64,
                     thinking={"type": "enabled", "budget_tokens": 2048, "display": "omitted"})
    frames = streamed.text.split("\n\n")
    events = [json.loads(e.split("data: ", 1)[1]) for e in frames if e.startswith("event:")]
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert [d["type"] for d in deltas if d["type"] != "text_delta"] == []  # no thinking_delta
    assert "".join(d["text"] for d in deltas) == "Four."
    assert [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"] == [
        "thinking", "text"]
    _refused(_post(served, thinking={"type": "enabled", "budget_tokens": 10}), "budget_tokens")
    _refused(_post(served, thinking={"type": "enabled", "budget_tokens": 2048, "display": "full"}), "display")
    _refused(_post(served, output_config={"effort": "extreme"}), "effort")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    r = c.messages.create(model="tiny", max_tokens=64, messages=USER,  # type: ignore[arg-type]
                          extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert set(json.loads(r.content[0].text)) == {"n"}  # type: ignore[union-attr]  # the schema's grammar
    _refused(_post(served, output_config={"format": {"type": "xml", "schema": {}}}), "format")


@pytest.mark.fields(
    "anthropic.MessagesRequest.metadata",
    "anthropic.Metadata.user_id",
    "anthropic.MessagesRequest.service_tier",
    "anthropic.MessagesRequest.context_management",
    "anthropic.ContextManagement.edits",
    "anthropic.ContextEdit.type",
    "anthropic.ContextEdit.keep",
)
def test_metadata_service_tier_and_context_management(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    clear = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}  # what Claude Code sends
    with caplog.at_level(logging.INFO, logger="corral.server.access"):
        r = _post(served, metadata={"user_id": "user-42"}, service_tier="standard_only",
                  context_management=clear)
        assert r.status_code == 200, r.text
        assert access_logged(caplog, "user='user-42'")
    assert _post(served, service_tier="auto").status_code == 200
    _refused(_post(served, service_tier="priority"), "service_tier")
    _refused(_post(served, metadata={"user_id": "x" * 300}), "metadata.user_id")
    _refused(_post(served, metadata={"session": "s"}), "session")
    tools = {"edits": [{"type": "clear_tool_uses_20250919"}]}
    _refused(_post(served, context_management=tools), "clear_tool_uses_20250919")


@pytest.mark.fields(
    "anthropic.CountTokensRequest.model",
    "anthropic.CountTokensRequest.messages",
    "anthropic.CountTokensRequest.system",
    "anthropic.CountTokensRequest.tools",
    "anthropic.CountTokensRequest.tool_choice",
    "anthropic.CountTokensRequest.thinking",
    "anthropic.CountTokensRequest.output_config",
    "anthropic.CountTokensRequest.context_management",
)
def test_count_tokens_counts_what_the_request_would_render(served: Served) -> None:
    def count(**body: Any) -> int:
        r = _post(served, "/v1/messages/count_tokens", model="tiny-tools", **body)
        assert r.status_code == 200, r.text
        return r.json()["input_tokens"]  # type: ignore[no-any-return]

    bare = count()
    assert count(system="A long system prompt.") > bare
    with_tools = count(tools=[WEATHER])
    assert with_tools > bare  # the tool names are in the tiny-tools template's prompt
    assert count(tools=[WEATHER], tool_choice={"type": "none"}) == bare  # none: tools left out
    unthinking = _post(served, "/v1/messages/count_tokens", model="tiny-think", thinking={"type": "disabled"})
    thinking = _post(served, "/v1/messages/count_tokens", model="tiny-think",
                     thinking={"type": "enabled", "budget_tokens": 2048})
    assert thinking.json()["input_tokens"] > unthinking.json()["input_tokens"]  # the opened <think>
    effort = _post(served, "/v1/messages/count_tokens", model="tiny-think", output_config={"effort": "low"})
    assert effort.json()["input_tokens"] == thinking.json()["input_tokens"]
    clear = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    assert count(context_management=clear) == bare
    assert _post(served, "/v1/messages/count_tokens", model="absent").status_code == 404
    _refused(_post(served, "/v1/messages/count_tokens", messages=[]), "at least one message")
    _refused(_post(served, "/v1/messages/count_tokens", context_management={"edits": [{"type": "x"}]}), "'x'")
