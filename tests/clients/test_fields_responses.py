"""Every field of a /v1/responses request has its effect or a 400 naming it, through the ``openai`` SDK
(or raw HTTP for what the SDK will not send) on the fake backend.

Each test claims the fields it shows with ``@pytest.mark.fields`` (see tests/test_request_fields.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import openai
import pytest
from client_support import Served, access_logged

from corral.testing.fake import FakeCall

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "strict": False,
    "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAA"
    "AABJRU5ErkJggg=="
)


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1/", api_key="corral", max_retries=0)


def _last(served: Served) -> FakeCall:
    return [c for c in served.fake.history if c.op == "generate"][-1]


def _post(served: Served, **body: Any) -> httpx.Response:
    return httpx.post(served.url + "/v1/responses", json={"model": "tiny", **body}, timeout=30)


def _refused(r: httpx.Response, *fragments: str) -> None:
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert all(f in message for f in fragments), message


@pytest.mark.fields(
    "responses.ResponsesRequest.model",
    "responses.ResponsesRequest.input",
    "responses.ResponsesRequest.instructions",
    "responses.ResponsesRequest.stream",
    "responses.InputItem.type",
    "responses.InputItem.role",
    "responses.InputItem.content",
    "responses.ContentPart.type",
    "responses.ContentPart.text",
    "responses.ContentPart.refusal",
)
def test_model_input_instructions_and_content(served: Served) -> None:
    c = _client(served)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="absent", input="x")
    served.fake.enqueue("ok")
    r = c.responses.create(
        model="tiny-tools",
        instructions="Be brief.",
        input=[  # type: ignore[list-item]
            {"role": "developer", "content": "Dev rules."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "First."}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Earlier answer."},
                                              {"type": "refusal", "refusal": "I won't."}]},
            {"role": "user", "content": "Second."},
        ],
    )
    assert r.output_text == "ok"
    prompt = _last(served).text
    # instructions first; the developer turn is a system turn (the template joins the system turns)
    assert prompt.startswith("<s>system: Be brief.\n\nDev rules.\nuser: First.\n")
    assert "assistant: Earlier answer.\n\nI won't." in prompt and "user: Second." in prompt
    served.fake.enqueue("streamed")
    events = list(c.responses.create(model="tiny", input="x", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "streamed"  # type: ignore
    _refused(_post(served), "input is required")
    _refused(_post(served, input=[{"role": "moderator", "content": "x"}]), "role must be")
    _refused(_post(served, input=[{"type": "item_reference", "id": "x"}]), "'item_reference' is not")
    _refused(_post(served, input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]),
             "'input_file' is not supported")


@pytest.mark.fields(
    "responses.ContentPart.image_url",
    "responses.ContentPart.detail",
    "responses.ContentPart.file_id",
)
def test_input_image_parts(served: Served) -> None:
    image = {"type": "input_image", "image_url": PNG, "detail": "auto"}
    r = _post(served, input=[{"role": "user", "content": [{"type": "input_text", "text": "what?"}, image]}])
    # the images reach the engine, which refuses them for a model without a projector: not dropped
    _refused(r, "does not support vision")
    _refused(_post(served, input=[{"role": "user", "content": [{**image, "detail": "low"}]}]), "detail 'low'")
    by_id = {"type": "input_image", "file_id": "file-1"}
    _refused(_post(served, input=[{"role": "user", "content": [by_id]}]), "file ids")
    remote = {"type": "input_image", "image_url": "https://example.com/cat.png"}
    _refused(_post(served, input=[{"role": "user", "content": [remote]}]), "data URI")


@pytest.mark.fields(
    "responses.ResponsesRequest.max_output_tokens",
    "responses.ResponsesRequest.temperature",
    "responses.ResponsesRequest.top_p",
)
def test_sampling_fields_reach_the_sampler(served: Served) -> None:
    c = _client(served)
    c.responses.create(model="tiny", input="x", temperature=0.3, top_p=0.6, max_output_tokens=2)
    request = _last(served).request
    assert request is not None and request.num_predict == 2
    assert (request.sampling.temperature, request.sampling.top_p) == (0.3, 0.6)
    _refused(_post(served, input="x", max_output_tokens=0), "max_output_tokens")


@pytest.mark.fields(
    "responses.ResponsesRequest.tools",
    "responses.ResponsesRequest.tool_choice",
    "responses.NamedToolChoice.type",
    "responses.NamedToolChoice.name",
    "responses.NamedToolChoice.mode",
    "responses.NamedToolChoice.tools",
)
def test_tools_and_tool_choice(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("no tools")
    c.responses.create(model="tiny-tools", input="x", tools=[TOOL, TIME], tool_choice="none")  # type: ignore
    assert "Tools:" not in _last(served).text  # none: the model is not offered the tools
    r = c.responses.create(model="tiny-tools", input="x", tools=[TOOL, TIME],  # type: ignore[list-item]
                           tool_choice={"type": "function", "name": "get_time"})
    assert r.output[-1].type == "function_call" and r.output[-1].name == "get_time"  # type: ignore[union-attr]
    served.fake.enqueue(CALL)
    r = c.responses.create(
        model="tiny-tools", input="x", tools=[TOOL, TIME],  # type: ignore[list-item]
        tool_choice={"type": "allowed_tools", "mode": "auto",  # type: ignore[typeddict-item]
                     "tools": [{"type": "function", "name": "get_weather"}]},
    )
    assert "Tools: get_weather \n" in _last(served).text  # only the allowed tool is offered
    assert r.tools is not None and [t.name for t in r.tools] == ["get_weather"]  # type: ignore[union-attr]
    r = c.responses.create(
        model="tiny-tools", input="x", tools=[TOOL, TIME],  # type: ignore[list-item]
        tool_choice={"type": "allowed_tools", "mode": "required",  # type: ignore[typeddict-item]
                     "tools": [{"type": "function", "name": "get_time"}]},
    )
    assert r.output[-1].type == "function_call" and r.output[-1].name == "get_time"  # type: ignore[union-attr]
    allowed = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "nope"}]}
    _refused(_post(served, input="x", tools=[TOOL], tool_choice=allowed), "tool_choice.tools")
    _refused(_post(served, input="x", tools=[TOOL], tool_choice={**allowed, "mode": "maybe"}), "mode")
    _refused(_post(served, input="x", tools=[TOOL], tool_choice={"type": "file_search"}), "tool_choice")
    _refused(_post(served, input="x", tools=[{"type": "file_search"}]), "file_search")


@pytest.mark.fields(
    "responses.ResponsesRequest.parallel_tool_calls",
    "responses.ResponsesRequest.max_tool_calls",
)
def test_parallel_tool_calls_and_max_tool_calls_cut_the_calls(served: Served) -> None:
    c = _client(served)
    three = CALL + CALL.replace("Paris", "Rome") + CALL.replace("Paris", "Oslo")

    def cities(**kw: Any) -> list[str]:
        served.fake.enqueue(three)
        r = c.responses.create(model="tiny-tools", input="x", tools=[TOOL], **kw)  # type: ignore[list-item]
        return [json.loads(o.arguments)["city"] for o in r.output if o.type == "function_call"]

    assert cities() == ["Paris", "Rome", "Oslo"]
    assert cities(parallel_tool_calls=False) == ["Paris"]
    assert cities(max_tool_calls=2) == ["Paris", "Rome"]
    served.fake.enqueue(three)
    events = list(c.responses.create(model="tiny-tools", input="x", tools=[TOOL], max_tool_calls=2,  # type: ignore
                                     stream=True))
    assert sum(e.type == "response.output_item.done" for e in events) == 2
    _refused(_post(served, input="x", max_tool_calls=0), "max_tool_calls")


@pytest.mark.fields(
    "responses.ResponsesRequest.reasoning",
    "responses.Reasoning.effort",
    "responses.Reasoning.summary",
    "responses.Reasoning.generate_summary",
    "responses.ResponsesRequest.include",
    "responses.InputItem.summary",
    "responses.InputItem.encrypted_content",
    "responses.SummaryPart.type",
    "responses.SummaryPart.text",
)
def test_reasoning_effort_summary_and_encrypted_content(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("Let me think.</think>Four.")
    r = c.responses.create(model="tiny-think", input="2+2?", reasoning={"effort": "low"})
    assert "<think>" in _last(served).text  # effort turned thinking on
    reasoning = r.output[0]
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "Let me think."  # type: ignore
    assert not reasoning.summary and reasoning.encrypted_content is None  # type: ignore[union-attr]
    served.fake.enqueue("Hmm.")
    c.responses.create(model="tiny-think", input="2+2?", reasoning={"effort": "none"})
    assert "<think>" not in _last(served).text
    for summary in ({"summary": "auto"}, {"generate_summary": "concise"}):
        served.fake.enqueue("Let me think.</think>Four.")
        r = c.responses.create(model="tiny-think", input="2+2?", reasoning=summary)  # type: ignore[arg-type]
        assert r.output[0].summary[0].type == "summary_text"  # type: ignore[union-attr]
        assert r.output[0].summary[0].text == "Let me think."  # type: ignore[union-attr]
    served.fake.enqueue("Let me think.</think>Four.")
    r = c.responses.create(model="tiny-think", input="2+2?", include=["reasoning.encrypted_content"],
                           store=False)
    secret = r.output[0].encrypted_content  # type: ignore[union-attr]
    assert secret == "Let me think."  # compat(ollama): the plain reasoning text
    # sent back, a reasoning item (summary parts or encrypted_content) rides on the next assistant turn
    made = httpx.post(served.url + "/api/create", timeout=30, json={
        "model": "tiny-replay", "from": "tiny", "stream": False,
        "template": "{{ range .Messages }}{{ .Role }}: {{ .Thinking }}|{{ .Content }}\n{{ end }}"})
    assert made.status_code == 200, made.text
    for item in ({"type": "reasoning", "summary": [{"type": "summary_text", "text": "Earlier idea."}]},
                 {"type": "reasoning", "summary": [], "encrypted_content": "Earlier idea."}):
        served.fake.enqueue("ok")
        c.responses.create(model="tiny-replay", input=[  # type: ignore[list-item]
            {"role": "user", "content": "q"}, item, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "again"}], reasoning={"effort": "none"})
        assert "assistant: Earlier idea.|a\n" in _last(served).text
    _refused(_post(served, input="x", reasoning={"effort": "extreme"}), "reasoning.effort")
    _refused(_post(served, input="x", include=["file_search_call.results"]), "include value")


@pytest.mark.fields(
    "responses.ResponsesRequest.text",
    "responses.TextConfig.format",
    "responses.TextConfig.verbosity",
    "responses.TextFormat.type",
    "responses.TextFormat.name",
    "responses.TextFormat.schema",
    "responses.TextFormat.strict",
    "responses.TextFormat.description",
)
def test_text_format_and_verbosity(served: Served) -> None:
    c = _client(served)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "name": "count", "schema": schema, "strict": True,
           "description": "A count."}
    r = c.responses.create(model="tiny", input="x", text={"format": fmt, "verbosity": "medium"})  # type: ignore
    assert set(json.loads(r.output_text)) == {"n"}  # the fake samples the schema's grammar
    assert r.text is not None and r.text.format.name == "count"  # type: ignore[union-attr]
    assert r.text.format.description == "A count." and r.text.format.strict is True  # type: ignore
    r = c.responses.create(model="tiny", input="x", text={"format": {"type": "json_object"}})
    json.loads(r.output_text)
    _refused(_post(served, input="x", text={"format": {"type": "json_schema", "name": "x"}}), "schema")
    _refused(_post(served, input="x", text={"format": {"type": "yaml"}}), "'yaml'")
    _refused(_post(served, input="x", text={"verbosity": "low"}), "text.verbosity 'low'")


@pytest.mark.fields(
    "responses.ResponsesRequest.store",
    "responses.ResponsesRequest.previous_response_id",
    "responses.ResponsesRequest.truncation",
    "responses.ResponsesRequest.background",
)
def test_store_previous_response_truncation_and_background(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("Kept.")
    first = c.responses.create(model="tiny", input="first", store=True)
    served.fake.enqueue("Next.")
    c.responses.create(model="tiny", input="second", previous_response_id=first.id)
    assert _last(served).text.index("first") < _last(served).text.index("Kept.")
    unstored = c.responses.create(model="tiny", input="x", store=False)
    _refused(_post(served, input="x", previous_response_id=unstored.id), "not found")
    long = "word " * 1200  # beyond the tiny model's context
    _refused(_post(served, input=long, truncation="disabled"), "num_ctx")
    served.fake.enqueue("fits")
    r = c.responses.create(model="tiny-tools", input=[{"role": "user", "content": long},  # type: ignore[list-item]
                                                {"role": "user", "content": "last"}], truncation="auto")
    assert r.output_text == "fits" and "last" in _last(served).text and long not in _last(served).text
    _refused(_post(served, input="x", truncation="middle"), "truncation")
    _refused(_post(served, input="x", background=True), "background")


@pytest.mark.fields(
    "responses.ResponsesRequest.metadata",
    "responses.ResponsesRequest.prompt_cache_key",
    "responses.ResponsesRequest.service_tier",
    "responses.ResponsesRequest.user",
    "responses.ResponsesRequest.safety_identifier",
    "responses.ResponsesRequest.client_metadata",
)
def test_bookkeeping_fields_are_echoed_or_logged(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    c = _client(served)
    with caplog.at_level(logging.INFO, logger="corral.server.access"):
        served.fake.enqueue("ok")
        r = c.responses.create(model="tiny", input="x", metadata={"ticket": "42"}, prompt_cache_key="sess-1",
                               service_tier="auto", safety_identifier="hash-77",
                               extra_body={"client_metadata": {"app": "codex"}})
        assert r.metadata == {"ticket": "42"} and r.prompt_cache_key == "sess-1"
        assert r.service_tier == "default" and r.safety_identifier == "hash-77"
        assert "codex" not in _last(served).text  # client bookkeeping never reaches the prompt
        c.responses.create(model="tiny", input="x", user="user-5")
        assert access_logged(caplog, "user='hash-77'") and access_logged(caplog, "user='user-5'")
    _refused(_post(served, input="x", service_tier="priority"), "service_tier 'priority'")
    _refused(_post(served, input="x", user="x" * 300), "user must be")
    _refused(_post(served, input="x", safety_identifier="a\nb"), "safety_identifier must be")


@pytest.mark.fields(
    "responses.ResponsesRequest.stream_options", "responses.StreamOptions.include_obfuscation"
)
def test_stream_options_include_obfuscation_pads_the_deltas(served: Served) -> None:
    def deltas(**body: Any) -> list[dict[str, Any]]:
        served.fake.enqueue("one two")
        r = _post(served, input="x", stream=True, **body)
        events = [json.loads(e.split("data: ", 1)[1]) for e in r.text.split("\n\n") if e.startswith("event:")]
        return [e for e in events if e["type"].endswith(".delta")]

    assert deltas() and all("obfuscation" not in e for e in deltas())
    padded = deltas(stream_options={"include_obfuscation": True})
    assert padded and all(isinstance(e["obfuscation"], str) for e in padded)
    _refused(_post(served, input="x", stream=True, stream_options={"include_usage": True}), "include_usage")


@pytest.mark.fields(
    "responses.InputItem.id",
    "responses.InputItem.status",
    "responses.InputItem.call_id",
    "responses.InputItem.name",
    "responses.InputItem.arguments",
    "responses.InputItem.output",
    "responses.InputItem.namespace",
    "responses.ContentPart.annotations",
    "responses.ContentPart.logprobs",
)
def test_replayed_items_and_function_calls(served: Served) -> None:
    """What a client sends back: earlier output items (ids, status, annotations: its bookkeeping) and
    function calls with their outputs, which become the assistant's calls and the tool turn."""
    served.fake.enqueue("It is sunny.")
    r = _post(served, model="tiny-tools", tools=[TOOL], input=[
        {"role": "user", "content": "Weather?"},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []}]},
        {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "call_9",
         "name": "get_weather", "namespace": "weather_tools", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_9", "output": "18 C"},
    ])
    assert r.status_code == 200, r.text
    prompt = _last(served).text
    assert "Checking." in prompt and "Oslo" in prompt and "tool: 18 C" in prompt
    call = {"type": "function_call", "call_id": "c", "name": "get_weather"}
    _refused(_post(served, input=[{**call, "arguments": "{oops"}]), "not valid JSON")
    _refused(_post(served, input=[{**call, "call_id": None}]), "needs call_id and name")
    _refused(_post(served, input=[{"type": "function_call_output", "output": "x"}]), "needs call_id")
