"""The ``openai`` SDK's Responses API, the OpenAI Agents SDK and Codex's request shape (fake backend)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from client_support import Served

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "strict": False,
    "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def _client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1/", api_key="corral", max_retries=0)


def _prompt(served: Served) -> str:
    return served.fake.history[-1].text if served.fake else ""


def test_create_stream_and_instructions(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("Hello from corral.")
    r = c.responses.create(model="tiny", input="hello", instructions="Be brief.")
    assert r.status == "completed" and r.output_text == "Hello from corral." and r.id.startswith("resp_")
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"  # type: ignore
    assert r.usage is not None and r.usage.output_tokens == len("Hello from corral.")
    assert r.instructions == "Be brief." and "Be brief." in _prompt(served)
    served.fake.enqueue("streamed words arrive")
    seen: list[Any] = []
    with c.responses.stream(model="tiny", input="hello") as s:  # needs output_index and content_index
        for ev in s:
            seen.append(ev)
        final = s.get_final_response()
    deltas = [e.delta for e in seen if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "streamed words arrive" == final.output_text
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    kinds = [e.type for e in seen]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    # raw stream=True as well
    served.fake.enqueue("raw")
    events = list(c.responses.create(model="tiny", input="hello", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "raw"  # type: ignore


def test_function_call_round_trip(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue(CALL)
    r = c.responses.create(model="tiny-tools", input="Weather in Paris?", tools=[TOOL])  # type: ignore[list-item]
    call = r.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    served.fake.enqueue("It is 18 C and sunny.")
    r2 = c.responses.create(
        model="tiny-tools",
        tools=[TOOL],
        input=[  # type: ignore[list-item]
            {"role": "user", "content": "Weather in Paris?"},
            call,  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"},
        ],
    )
    assert r2.output_text == "It is 18 C and sunny."
    assert "tool: 18 C, sunny" in _prompt(served)
    served.fake.enqueue(CALL)  # streamed: the function_call item and its argument events
    events = list(c.responses.create(model="tiny-tools", input="Weather?", tools=[TOOL], stream=True))  # type: ignore
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds
    done = [e for e in events if e.type == "response.output_item.done"][-1]
    assert done.item.type == "function_call" and json.loads(done.item.arguments) == {"city": "Paris"}  # type: ignore


def test_max_output_tokens_ends_completed_with_details(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("one two three four")
    r = c.responses.create(model="tiny", input="count", max_output_tokens=5)
    # Ollama and llama-server call it completed; the reason for the cut is kept in incomplete_details
    assert r.output_text == "one t" and r.status == "completed"
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    served.fake.enqueue("one two three four")
    events = list(c.responses.create(model="tiny", input="count", max_output_tokens=5, stream=True))
    assert events[-1].type == "response.completed"  # Codex fails a turn that ends in response.incomplete
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "completed" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    served.fake.enqueue("one two")  # a turn the model ends has no details
    r = c.responses.create(model="tiny", input="count", max_output_tokens=50)
    assert r.status == "completed" and r.incomplete_details is None


def test_text_format_json_schema_and_tool_choice(served: Served) -> None:
    c = _client(served)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = c.responses.create(
        model="tiny",
        input="a city",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema}},
    )
    assert set(json.loads(r.output_text)) == {"city"}  # the fake samples the schema's grammar
    r = c.responses.create(model="tiny-tools", input="x", tools=[TOOL], tool_choice="required")  # type: ignore
    assert r.output[-1].type == "function_call" and r.output[-1].name == "get_weather"  # type: ignore


def test_previous_response_id_from_the_store(served: Served) -> None:
    c = _client(served)
    served.fake.enqueue("My name is Corral.")
    first = c.responses.create(model="tiny", input="What is your name?", store=True)
    served.fake.enqueue("Yes.")
    c.responses.create(model="tiny", input="Really?", previous_response_id=first.id)
    prompt = _prompt(served)
    assert prompt.index("What is your name?") < prompt.index("My name is Corral.") < prompt.index("Really?")
    assert c.responses.retrieve(first.id).output_text == "My name is Corral."
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="tiny", input="x", previous_response_id="resp_unknown")
    served.fake.enqueue("Not kept.")
    unstored = c.responses.create(model="tiny", input="hi", store=False)
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="tiny", input="x", previous_response_id=unstored.id)


def test_errors(served: Served) -> None:
    c = _client(served)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="absent", input="x")
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="tiny", input="x", extra_body={"colour": "blue"})
    assert "colour" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e2:
        c.responses.create(
            model="tiny", input="x", tools=[{"type": "file_search", "vector_store_ids": ["v"]}]
        )
    assert "file_search" in str(e2.value)
    with pytest.raises(openai.BadRequestError) as e3:
        c.responses.create(model="tiny", input="word " * 1200)
    assert "num_ctx" in str(e3.value)
    served.fake.enqueue("abcdef", error="broke mid-stream", error_after=2)
    events = list(c.responses.create(model="tiny", input="x", stream=True))
    assert events[-1].type == "response.failed" and "broke" in events[-1].response.error.message  # type: ignore


def test_codex_request_shape(served: Served) -> None:
    """What Codex sends (agent-clients.md): developer messages with ids, hosted tools, its extra fields."""
    fn = {**TOOL, "name": "exec_command"}
    body = {
        "model": "tiny-tools",
        "stream": True,
        "store": False,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "sess",
        "client_metadata": {"x": "y"},
        "input": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You are Codex."}],
            },
            {
                "type": "message",
                "id": "msg_2",
                "role": "user",
                "content": [{"type": "input_text", "text": "<environment_context>cwd</environment_context>"}],
            },
            {
                "type": "message",
                "id": "msg_3",
                "role": "user",
                "content": [{"type": "input_text", "text": "Say hi"}],
            },
        ],
        "tools": [
            fn,
            {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [fn]},
            {"type": "web_search", "external_web_access": False},
        ],
    }
    headers = {"accept": "text/event-stream", "authorization": "Bearer x", "originator": "codex_exec"}
    served.fake.enqueue("hi")
    r = httpx.post(served.url + "/v1/responses", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    events = [json.loads(e.split("data: ", 1)[1]) for e in r.text.split("\n\n") if e.startswith("event:")]
    kinds = [e["type"] for e in events]
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    done = [e for e in events if e["type"] == "response.output_item.done"][-1]["item"]
    assert done["type"] == "message" and done["content"][0]["text"] == "hi" and done["status"] == "completed"
    assert kinds[-1] == "response.completed"
    prompt = _prompt(served)
    assert "system: You are Codex." in prompt and "Tools: exec_command \n" in prompt  # hosted tools left out


def test_agents_sdk_runs_an_agent_with_a_tool(served: Served) -> None:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        calls.append(city)
        return f"18 C and sunny in {city}"

    client = openai.AsyncOpenAI(base_url=served.url + "/v1/", api_key="corral", max_retries=0)
    model = agents.OpenAIResponsesModel(model="tiny-tools", openai_client=client)
    agent = agents.Agent(
        name="weather", instructions="Answer with the weather.", tools=[get_weather], model=model
    )
    served.fake.enqueue(CALL)
    served.fake.enqueue("It is 18 C and sunny in Paris.")
    result = asyncio.run(agents.Runner.run(agent, "Weather in Paris?"))
    assert calls == ["Paris"] and result.final_output == "It is 18 C and sunny in Paris."
    assert "18 C and sunny in Paris" in _prompt(served)  # the tool's output went back to the model


def test_strict_tools_with_tool_choice_auto(served: Served) -> None:
    """``tools[].strict`` with tool_choice auto: a call the model opens is held to the tool's schema (the
    fake backend honours the lazy constraint: a scripted call with a wrong argument comes out fitted)."""
    c = _client(served)
    strict = {**TOOL, "strict": True}
    served.fake.enqueue('<tool_call>{"name": "get_weather", "arguments": {"town": 3}}</tool_call>')
    r = c.responses.create(model="tiny-tools", input="Weather in Paris?", tools=[strict])  # type: ignore[list-item]
    (call,) = [o for o in r.output if o.type == "function_call"]
    args = json.loads(call.arguments)
    assert call.name == "get_weather" and isinstance(args.get("city"), str), args
    sampling = [h for h in served.fake.history if h.op == "generate"][-1].request.sampling
    assert sampling.json_schema is not None and sampling.json_schema.lazy
    loose = [h for h in served.fake.history if h.op == "generate"]
    served.fake.enqueue("Sunny.")
    r = c.responses.create(model="tiny-tools", input="Weather in Paris?", tools=[TOOL])  # type: ignore[list-item]
    assert r.output_text == "Sunny."
    assert len([h for h in served.fake.history if h.op == "generate"]) == len(loose) + 1
    assert [h for h in served.fake.history if h.op == "generate"][-1].request.sampling.json_schema is None


def test_agents_sdk_chat_completions_with_a_strict_tool(served: Served) -> None:
    """The Agents SDK over Chat Completions sends every function_tool as strict with tool_choice auto."""
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool  # strict_mode=True by default
    def get_weather(city: str) -> str:
        """Weather in a city."""
        calls.append(city)
        return f"18 C and sunny in {city}"

    client = openai.AsyncOpenAI(base_url=served.url + "/v1/", api_key="corral", max_retries=0)
    model = agents.OpenAIChatCompletionsModel(model="tiny-tools", openai_client=client)
    agent = agents.Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather],
                         model=model)
    served.fake.enqueue(CALL)
    served.fake.enqueue("It is 18 C and sunny in Paris.")
    result = asyncio.run(agents.Runner.run(agent, "Weather in Paris?"))
    assert calls == ["Paris"] and result.final_output == "It is 18 C and sunny in Paris."
    sampling = [h for h in served.fake.history if h.op == "generate"][-1].request.sampling
    assert sampling.json_schema is not None and sampling.json_schema.lazy  # strict had its effect
