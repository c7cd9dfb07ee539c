"""Every field of the native API's requests has its effect or a 400 naming it (over the fake backend).

Each test claims the fields it shows with ``@pytest.mark.fields`` (see tests/test_request_fields.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.testing import TestClient
from server_support import Harness

from corral.testing.fake import FakeCall

USER = [{"role": "user", "content": "hello"}]
GRAMMAR = 'root ::= "yes" | "no"\n'


def last_generate(harness: Harness) -> FakeCall:
    return [c for c in harness.fake.history if c.op == "generate"][-1]


def make_model(client: TestClient[Any], name: str, template: str, **extra: Any) -> None:
    r = client.post(
        "/api/create", json={"model": name, "from": "tiny", "template": template, "stream": False, **extra}
    )
    assert r.status_code == 200, r.text


# ---- unknown fields and options ----------------------------------------------------------------------
def test_unknown_fields_and_unknown_options_are_refused_by_name(client: TestClient[Any]) -> None:
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "whatever": 1})
    assert r.status_code == 400 and "whatever" in r.json()["error"]
    r = client.post(
        "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x", "mood": "happy"}]}
    )
    assert r.status_code == 400 and "mood" in r.json()["error"]
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "options": {"temprature": 0}})
    assert r.status_code == 400 and 'unknown option "temprature"' in r.json()["error"]
    # removed options: only the value that asks for nothing passes (what ollama-python may send)
    r = client.post(
        "/api/generate",
        json={
            "model": "tiny",
            "prompt": "hi",
            "stream": False,
            "options": {
                "num_predict": 3,
                "mirostat": 0,
                "tfs_z": 1.0,
                "mirostat_tau": 5.0,
                "use_mlock": False,
            },
        },
    )
    assert r.status_code == 200 and r.json()["eval_count"] == 3
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "options": {"mirostat": 2}})
    assert r.status_code == 400 and '"mirostat" was removed' in r.json()["error"]


# ---- /api/generate ---------------------------------------------------------------------------------------
@pytest.mark.fields("ollama.GenerateRequest.system", "ollama.GenerateRequest.template")
def test_generate_system_and_template_reach_the_prompt(client: TestClient[Any], harness: Harness) -> None:
    client.post(
        "/api/generate",
        json={
            "model": "tiny",
            "prompt": "hi",
            "system": "Talk like a pirate.",
            "stream": False,
            "options": {"num_predict": 1},
        },
    )
    assert "Talk like a pirate." in last_generate(harness).text
    client.post(
        "/api/generate",
        json={
            "model": "tiny",
            "prompt": "hi",
            "stream": False,
            "template": "Q: {{ .Prompt }} A:",
            "options": {"num_predict": 1},
        },
    )
    assert last_generate(harness).text.endswith("Q: hi A:")
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "template": "{{ .Nope"})
    assert r.status_code == 400


@pytest.mark.fields("ollama.GenerateRequest.suffix")
def test_generate_suffix_fills_in_the_middle(client: TestClient[Any], harness: Harness) -> None:
    make_model(client, "tiny-fim", "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>")
    client.post(
        "/api/generate",
        json={
            "model": "tiny-fim",
            "prompt": "def f(",
            "suffix": "    return x",
            "stream": False,
            "options": {"num_predict": 1},
        },
    )
    assert last_generate(harness).text.endswith("<PRE> def f( <SUF>    return x <MID>")


@pytest.mark.fields("ollama.GenerateRequest.context")
def test_generate_context_continues_the_tokens(client: TestClient[Any], harness: Harness) -> None:
    r = client.post(
        "/api/generate",
        json={"model": "tiny", "prompt": "one", "stream": False, "options": {"num_predict": 2}},
    )
    context = r.json()["context"]
    client.post(
        "/api/generate",
        json={
            "model": "tiny",
            "prompt": "two",
            "context": context,
            "stream": False,
            "options": {"num_predict": 1},
        },
    )
    request = last_generate(harness).request
    assert request is not None and request.prompt[: len(context)] == context


@pytest.mark.fields(
    "ollama.GenerateRequest.truncate",
    "ollama.GenerateRequest.shift",
    "ollama.ChatRequest.truncate",
    "ollama.ChatRequest.shift",
)
def test_truncate_and_shift(client: TestClient[Any], harness: Harness) -> None:
    long = "word " * 400
    opts = {"num_ctx": 64, "num_predict": 1}
    r = client.post(
        "/api/generate", json={"model": "tiny", "prompt": long, "truncate": False, "options": opts}
    )
    assert r.status_code == 400 and "longer than the context" in r.json()["error"]
    r = client.post(
        "/api/chat",
        json={
            "model": "tiny",
            "truncate": False,
            "options": opts,
            "messages": [{"role": "user", "content": long}],
        },
    )
    assert r.status_code == 400 and "longer than the context" in r.json()["error"]
    client.post(
        "/api/generate",
        json={
            "model": "tiny",
            "prompt": "hi",
            "shift": False,
            "stream": False,
            "options": {"num_predict": 1},
        },
    )
    assert last_generate(harness).request.shift is False  # type: ignore[union-attr]
    client.post(
        "/api/chat",
        json={
            "model": "tiny",
            "messages": USER,
            "shift": False,
            "stream": False,
            "options": {"num_predict": 1},
        },
    )
    assert last_generate(harness).request.shift is False  # type: ignore[union-attr]
    client.post(
        "/api/chat", json={"model": "tiny", "messages": USER, "stream": False, "options": {"num_predict": 1}}
    )
    assert last_generate(harness).request.shift is True  # type: ignore[union-attr]
    # truncate (the default) drops the oldest turns to fit instead
    history = [
        {"role": "user", "content": long},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "last question"},
    ]
    r = client.post(
        "/api/chat",
        json={
            "model": "tiny",
            "messages": history,
            "stream": False,
            "options": {"num_ctx": 128, "num_predict": 1},
        },
    )
    assert r.status_code == 200 and "word word" not in last_generate(harness).text


@pytest.mark.fields("ollama.GenerateRequest.grammar", "ollama.ChatRequest.grammar")
def test_grammar_reaches_llama_cpp_sampler_as_sent(client: TestClient[Any], harness: Harness) -> None:
    r = client.post(
        "/api/generate", json={"model": "tiny", "prompt": "ok?", "grammar": GRAMMAR, "stream": False}
    )
    assert r.status_code == 200 and r.json()["response"] in ("yes", "no")
    sampling = last_generate(harness).request.sampling  # type: ignore[union-attr]
    assert sampling.grammar == GRAMMAR and sampling.json_schema is None  # llama.cpp's sampler, not llguidance
    r = client.post(
        "/api/chat", json={"model": "tiny", "messages": USER, "grammar": GRAMMAR, "stream": False}
    )
    assert r.status_code == 200 and r.json()["message"]["content"] in ("yes", "no")


@pytest.mark.parametrize(
    ("grammar", "fragment"),
    [
        ("", None),  # empty: no grammar
        ('answer ::= "x"\n', "no 'root' rule"),
        ("root ::= item\n", "'item' is used but never defined"),
        ('root ::= "unterminated\n', "unterminated string"),
        ("root ::= " + "(" * 100 + '"x"' + ")" * 100 + "\n", "nest deeper"),
        ('root ::= "x"{3000}\n', "exceeds 2000"),
        ('root ::= "x"{5,2}\n', "maximum below its minimum"),
        ("root ::= " + " ".join(['"x"{2000}'] * 40) + "\n", "add up to more than"),
        ("root ::= " + '"a" ' * 70000 + "\n", "characters long"),
    ],
)
def test_grammar_is_bounded_and_checked_before_it_runs(
    client: TestClient[Any], grammar: str, fragment: str | None
) -> None:
    r = client.post(
        "/api/generate",
        json={
            "model": "tiny",
            "prompt": "x",
            "grammar": grammar,
            "stream": False,
            "options": {"num_predict": 2},
        },
    )
    if fragment is None:
        assert r.status_code == 200
    else:
        assert r.status_code == 400 and fragment in r.json()["error"], r.text


def test_grammar_conflicts_are_refused(client: TestClient[Any]) -> None:
    r = client.post(
        "/api/generate", json={"model": "tiny", "prompt": "x", "grammar": GRAMMAR, "format": "json"}
    )
    assert r.status_code == 400 and "grammar cannot be combined with format" in r.json()["error"]


def test_grammar_on_a_thinking_model_shapes_the_answer_after_the_thought(
    client: TestClient[Any], harness: Harness
) -> None:
    grammar = 'root ::= answer\nanswer ::= "yes" | "no"\nthink-text ::= "clash?"\n'
    r = client.post(
        "/api/generate",
        json={"model": "tiny-think", "prompt": "ok?", "think": True, "grammar": grammar, "stream": False},
    )
    assert r.status_code == 200, r.text
    sent = last_generate(harness).request.sampling.grammar  # type: ignore[union-attr]
    assert sent is not None and "user-root ::= user-answer" in sent and 'user-think-text ::= "clash?"' in sent
    body = r.json()
    assert body["response"] in ("yes", "no")


@pytest.mark.fields("ollama.GenerateRequest._debug_render_only", "ollama.ChatRequest._debug_render_only")
def test_debug_render_only_returns_the_prompt_without_generating(
    client: TestClient[Any], harness: Harness
) -> None:
    before = len([c for c in harness.fake.history if c.op == "generate"])
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hello", "_debug_render_only": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    info = body["_debug_info"]
    assert info["rendered_template"].endswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
    assert body["done"] is False and body["response"] == "" and body["model"] == "tiny"
    tokens = client.post("/api/tokenize", json={"model": "tiny", "content": info["rendered_template"]})
    assert info["token_count"] == len(tokens.json()["tokens"])
    r = client.post(
        "/api/chat", json={"model": "tiny", "messages": USER, "_debug_render_only": True, "stream": True}
    )
    body = r.json()
    assert body["_debug_info"]["rendered_template"].endswith("user\nhello<|im_end|>\n<|im_start|>assistant\n")
    assert body["_debug_info"]["token_count"] > 0 and body["message"] == {"role": "", "content": ""}
    assert len([c for c in harness.fake.history if c.op == "generate"]) == before  # nothing generated
    r = client.post(
        "/api/chat",
        json={
            "model": "tiny",
            "messages": USER,
            "_debug_render_only": True,
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
    )
    assert r.status_code == 400 and "does not support tools" in r.json()["error"]  # the same checks apply


@pytest.mark.fields("ollama.GenerateRequest.images", "ollama.ChatMessage.images")
def test_images_on_a_text_model_are_refused_not_dropped(client: TestClient[Any], sample_png: str) -> None:
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "what?", "images": [sample_png]})
    assert r.status_code == 400 and "vision" in r.json()["error"]
    r = client.post(
        "/api/chat",
        json={"model": "tiny", "messages": [{"role": "user", "content": "what?", "images": [sample_png]}]},
    )
    assert r.status_code == 400 and "vision" in r.json()["error"]


# ---- /api/chat ---------------------------------------------------------------------------------------
@pytest.mark.fields(
    "ollama.ChatRequest.format",
    "ollama.ChatRequest.options",
    "ollama.ChatRequest.logprobs",
    "ollama.ChatRequest.top_logprobs",
    "ollama.ChatRequest.keep_alive",
)
def test_chat_format_options_logprobs_keep_alive(client: TestClient[Any], harness: Harness) -> None:
    r = client.post(
        "/api/chat",
        json={
            "model": "tiny",
            "messages": USER,
            "stream": False,
            "format": "json",
            "options": {"num_predict": 5, "seed": 11, "temperature": 0.3},
            "logprobs": True,
            "top_logprobs": 3,
            "keep_alive": "7m",
        },
    )
    assert r.status_code == 200
    request = last_generate(harness).request
    assert request is not None and request.sampling.grammar and request.num_predict == 5
    assert (request.sampling.seed, request.sampling.temperature) == (11, 0.3)
    lps = r.json()["logprobs"]
    assert lps and all(len(e["top_logprobs"]) == 3 for e in lps)
    (row,) = client.get("/api/ps").json()["models"]
    assert row["expires_at"] > r.json()["created_at"]
    r = client.post("/api/chat", json={"model": "tiny", "messages": USER, "top_logprobs": 30})
    assert r.status_code == 400 and "top_logprobs" in r.json()["error"]


@pytest.mark.fields(
    "ollama.ChatMessage.thinking",
    "ollama.ChatMessage.tool_calls",
    "ollama.ChatMessage.tool_name",
    "ollama.ChatMessage.tool_call_id",
    "ollama.ToolCallWire.function",
    "ollama.ToolCallWire.id",
    "ollama.ToolCallFunction.name",
    "ollama.ToolCallFunction.arguments",
    "ollama.ToolCallFunction.index",
    "ollama.ToolWire.function",
    "ollama.ToolFunction.name",
    "ollama.ToolFunction.description",
    "ollama.ToolFunction.parameters",
)
def test_history_and_tools_reach_the_template(client: TestClient[Any], harness: Harness) -> None:
    make_model(
        client,
        "tiny-history",
        (
            "{{ range .Tools }}[tool {{ .Function.Name }}: {{ .Function.Description }} "
            "{{ .Function.Parameters.Properties }}]{{ end }}"
            "{{ range .Messages }}<{{ .Role }}>"
            "{{ if .Thinking }}(thought {{ .Thinking }}){{ end }}{{ .Content }}"
            "{{ range .ToolCalls }}(call {{ .Function.Index }} {{ .ID }} {{ .Function.Name }} "
            "{{ .Function.Arguments }}){{ end }}{{ if .ToolName }}(result of {{ .ToolName }} "
            "{{ .ToolCallID }}){{ end }}{{ end }}<assistant><tool_call>"
        ),
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather now.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Lima?"},
        {
            "role": "assistant",
            "content": "",
            "thinking": "look it up",
            "tool_calls": [
                {"id": "call_7", "function": {"index": 3, "name": "weather", "arguments": {"city": "Lima"}}}
            ],
        },
        {"role": "tool", "content": "22C", "tool_name": "weather", "tool_call_id": "call_7"},
    ]
    r = client.post(
        "/api/chat",
        json={
            "model": "tiny-history",
            "messages": messages,
            "tools": tools,
            "stream": False,
            "options": {"num_predict": 1},
        },
    )
    assert r.status_code == 200, r.text
    seen = last_generate(harness).text
    assert "[tool weather: Weather now. map[city:" in seen
    assert "(thought look it up)" in seen and "(call 3 call_7 weather" in seen and "Lima" in seen
    assert "(result of weather call_7)" in seen


@pytest.mark.fields("ollama.ToolWire.type", "ollama.ToolCallWire.type")
def test_tool_types_other_than_function_are_refused(client: TestClient[Any]) -> None:
    tool = {"type": "retrieval", "function": {"name": "f"}}
    r = client.post("/api/chat", json={"model": "tiny-tools", "messages": USER, "tools": [tool]})
    assert r.status_code == 400 and "tool type 'retrieval'" in r.json()["error"]
    call = {"type": "code", "function": {"name": "f", "arguments": {}}}
    r = client.post(
        "/api/chat",
        json={
            "model": "tiny",
            "messages": [{"role": "assistant", "content": "", "tool_calls": [call]}, *USER],
        },
    )
    assert r.status_code == 400 and "tool call type 'code'" in r.json()["error"]
    tool["type"] = "function"
    r = client.post(
        "/api/chat",
        json={
            "model": "tiny-tools",
            "messages": USER,
            "tools": [tool],
            "stream": False,
            "options": {"num_predict": 1},
        },
    )
    assert r.status_code == 200


# ---- embeddings ------------------------------------------------------------------------------------------
@pytest.mark.fields(
    "ollama.EmbedRequest.truncate",
    "ollama.EmbedRequest.keep_alive",
    "ollama.EmbedRequest.options",
    "ollama.EmbeddingsRequest.keep_alive",
    "ollama.EmbeddingsRequest.options",
)
def test_embed_truncate_keep_alive_and_options(client: TestClient[Any], harness: Harness) -> None:
    long = "word " * 200
    r = client.post(
        "/api/embed", json={"model": "tiny", "input": long, "truncate": False, "options": {"num_ctx": 32}}
    )
    assert r.status_code == 400 and "exceeds the context length" in r.json()["error"]
    r = client.post("/api/embed", json={"model": "tiny", "input": long, "options": {"num_ctx": 32}})
    assert r.status_code == 200 and r.json()["prompt_eval_count"] <= 32
    load = [c for c in harness.fake.history if c.op == "load"][-1]
    assert load.options is not None and load.options.num_ctx == 32
    r = client.post("/api/embed", json={"model": "tiny", "input": "x", "options": {"num_ctx": "big"}})
    assert r.status_code == 400 and "num_ctx" in r.json()["error"]
    r = client.post("/api/embeddings", json={"model": "tiny", "prompt": "x", "options": {"num_thread": "a"}})
    assert r.status_code == 400 and "num_thread" in r.json()["error"]
    for path, body in (("/api/embed", {"input": "x"}), ("/api/embeddings", {"prompt": "x"})):
        client.post(path, json={"model": "tiny", "keep_alive": 0, **body})
        assert client.get("/api/ps").json()["models"] == []  # keep_alive 0: unloaded once answered
        r = client.post(path, json={"model": "tiny", "keep_alive": "soon", **body})
        assert r.status_code == 400 and "keep_alive" in r.json()["error"]


# ---- model management ----------------------------------------------------------------------------------
@pytest.mark.fields("ollama.ShowRequest.system", "ollama.ShowRequest.template", "ollama.ShowRequest.options")
def test_show_reports_with_the_requests_system_template_and_options(client: TestClient[Any]) -> None:
    plain = client.post("/api/show", json={"model": "tiny"}).json()
    assert "tools" not in plain.get("capabilities", [])
    r = client.post(
        "/api/show",
        json={
            "model": "tiny",
            "system": "Be a cat.",
            "template": "{{ if .Tools }}T{{ end }}{{ .Prompt }}",
            "options": {"temperature": 0.25, "stop": ["END"]},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["system"] == "Be a cat." and "SYSTEM Be a cat." in body["modelfile"]
    assert body["template"] == "{{ if .Tools }}T{{ end }}{{ .Prompt }}" and "TEMPLATE" in body["modelfile"]
    assert "tools" in body["capabilities"]  # the capabilities follow the template shown
    assert "temperature" in body["parameters"] and "0.25" in body["parameters"]
    assert "PARAMETER temperature 0.25" in body["modelfile"] and "PARAMETER stop END" in body["modelfile"]
    # nothing was stored
    assert client.post("/api/show", json={"model": "tiny"}).json().get("system") == plain.get("system")
    r = client.post("/api/show", json={"model": "tiny", "template": "{{ .Broken"})
    assert r.status_code == 400 and "invalid template" in r.json()["error"]
    r = client.post("/api/show", json={"model": "tiny", "options": {"temperature": "warm"}})
    assert r.status_code == 400 and "temperature" in r.json()["error"]
    r = client.post("/api/show", json={"model": "tiny", "options": {"colour": 1}})
    assert r.status_code == 400 and "colour" in r.json()["error"]


@pytest.mark.fields("ollama.ShowRequest.verbose")
def test_show_verbose_adds_tensors(client: TestClient[Any]) -> None:
    assert "tensors" not in client.post("/api/show", json={"model": "tiny"}).json()
    tensors = client.post("/api/show", json={"model": "tiny", "verbose": True}).json()["tensors"]
    assert tensors and {"name", "type", "shape"} <= set(tensors[0])


def test_tags_and_show_carry_capabilities_and_lengths(client: TestClient[Any]) -> None:
    models = {m["name"]: m for m in client.get("/api/tags").json()["models"]}
    tiny, tools = models["tiny:latest"], models["tiny-tools:latest"]
    assert tiny["capabilities"] == ["completion"]
    assert "tools" in tools["capabilities"] and "thinking" in models["tiny-think:latest"]["capabilities"]
    shown = client.post("/api/show", json={"model": "tiny"}).json()
    arch = shown["model_info"]["general.architecture"]
    for details in (tiny["details"], shown["details"]):
        assert details["context_length"] == shown["model_info"][f"{arch}.context_length"] > 0
        assert details["embedding_length"] == shown["model_info"][f"{arch}.embedding_length"] > 0
    assert shown["capabilities"] == tiny["capabilities"]


@pytest.mark.fields("ollama.ShowRequest.name", "ollama.DeleteRequest.name", "ollama.TransferRequest.name")
def test_the_deprecated_name_field_still_names_the_model(client: TestClient[Any]) -> None:
    shown = client.post("/api/show", json={"name": "tiny"}).json()
    assert shown["model_info"]["general.architecture"] == "llama"
    client.post("/api/copy", json={"source": "tiny", "destination": "gone"})
    assert client.request("DELETE", "/api/delete", json={"name": "gone"}).status_code == 200
    r = client.post("/api/pull", json={"name": "../bad", "stream": False})
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]


@pytest.mark.fields("ollama.TransferRequest.username", "ollama.TransferRequest.password")
def test_pull_and_push_refuse_credentials_they_would_not_use(client: TestClient[Any]) -> None:
    for path in ("/api/pull", "/api/push"):
        r = client.post(path, json={"model": "tiny", "username": "me", "password": "secret", "stream": False})
        assert r.status_code == 400 and "username and password are not supported" in r.json()["error"]
    # the Go client always sends both, empty: that is fine
    r = client.post("/api/pull", json={"model": "../x", "username": "", "password": "", "stream": False})
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]


@pytest.mark.fields(
    "ollama.CreateRequest.name",
    "ollama.CreateRequest.template",
    "ollama.CreateRequest.license",
    "ollama.CreateRequest.messages",
    "ollama.CreateRequest.parameters",
    "ollama.CreateRequest.system",
    "ollama.CreateRequest.renderer",
    "ollama.CreateRequest.parser",
    "ollama.CreateRequest.requires",
)
def test_create_stores_what_it_is_given(client: TestClient[Any]) -> None:
    r = client.post(
        "/api/create",
        json={
            "name": "made",
            "from": "tiny",
            "template": "{{ .Prompt }}!",
            "license": ["MIT", "extra"],
            "messages": [{"role": "user", "content": "seed q"}, {"role": "assistant", "content": "seed a"}],
            "parameters": {"temperature": 0.4},
            "system": "Be kind.",
            "renderer": "qwen3-coder",
            "parser": "qwen3-coder",
            "requires": "0.12.0",
            "stream": False,
        },
    )
    assert r.status_code == 200, r.text
    shown = client.post("/api/show", json={"model": "made"}).json()
    assert shown["template"] == "{{ .Prompt }}!" and shown["license"] == "MIT\nextra"
    assert [m["content"] for m in shown["messages"]] == ["seed q", "seed a"]
    assert "0.4" in shown["parameters"] and shown["system"] == "Be kind."
    assert (shown["renderer"], shown["parser"], shown["requires"]) == ("qwen3-coder", "qwen3-coder", "0.12.0")
    r = client.post("/api/create", json={"model": "bad", "from": "tiny", "parameters": {"bogus": 1}})
    assert r.status_code == 400


@pytest.mark.fields("ollama.CreateRequest.adapters")
def test_create_adapters_are_loaded_with_the_model(
    client: TestClient[Any], harness: Harness, tiny_gguf: Any, tmp_path: Path
) -> None:
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "lora.gguf"), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((2, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for path in (tmp_path / "lora.gguf", tiny_gguf):
        data = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        client.post(f"/api/blobs/{digest}", content=data)
        r = client.post(
            "/api/create",
            json={"model": "lora", "from": "tiny", "adapters": {"a.gguf": digest}, "stream": False},
        )
        if path == tiny_gguf:  # a model, not a LoRA adapter: refused, not stored as one
            assert r.status_code == 400 and "not a LoRA adapter" in r.json()["error"]
            continue
        assert r.status_code == 200, r.text
        assert "ADAPTER " in client.post("/api/show", json={"model": "lora"}).json()["modelfile"]
        client.post("/api/generate", json={"model": "lora", "stream": False})
        load = [c for c in harness.fake.history if c.op == "load"][-1]
        assert load.options is not None and len(load.options.adapters) == 1


@pytest.mark.fields("ollama.CreateRequest.quantize", "ollama.CreateRequest.quantization")
def test_create_quantize_and_its_old_name(client: TestClient[Any]) -> None:
    for key in ("quantize", "quantization"):
        r = client.post(
            "/api/create", json={"model": f"q-{key}", "from": "tiny", key: "q9_z", "stream": False}
        )
        assert r.status_code == 400 and "q9_z" in r.json()["error"].lower(), r.text


@pytest.mark.fields("ollama.CreateRequest.modelfile")
def test_create_modelfile_text_is_refused_with_the_way_forward(client: TestClient[Any]) -> None:
    r = client.post(
        "/api/create", json={"model": "old", "modelfile": "FROM tiny\nSYSTEM hi", "stream": False}
    )
    assert r.status_code == 400 and "modelfile" in r.json()["error"]


@pytest.mark.fields(
    "ollama.TokenizeRequest.keep_alive",
    "ollama.TokenizeRequest.options",
    "ollama.DetokenizeRequest.keep_alive",
    "ollama.DetokenizeRequest.options",
)
def test_tokenize_keep_alive_and_options(client: TestClient[Any], harness: Harness) -> None:
    for path, body in (("/api/tokenize", {"content": "x"}), ("/api/detokenize", {"tokens": [100]})):
        r = client.post(path, json={"model": "tiny", "options": {"num_ctx": 48}, "keep_alive": 0, **body})
        assert r.status_code == 200, r.text
        load = [c for c in harness.fake.history if c.op == "load"][-1]
        assert load.options is not None and load.options.num_ctx == 48
        assert client.get("/api/ps").json()["models"] == []  # keep_alive 0: unloaded once answered
        r = client.post(path, json={"model": "tiny", "options": {"num_ctx": "x"}, **body})
        assert r.status_code == 400 and "num_ctx" in r.json()["error"]
