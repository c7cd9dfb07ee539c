"""Wire tests of the native API (/api/*) over the fake backend: shapes, streaming, errors."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from litestar.testing import TestClient
from server_support import Harness, ndjson

from corral.testing.registry import TestRegistry

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
           "eval_duration")


def test_root_and_version(client: TestClient[Any]) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert client.head("/").status_code == 200
    r = client.get("/api/version")
    assert r.status_code == 200 and re.fullmatch(r"\d+\.\d+\.\d+.*", r.json()["version"])


@pytest.mark.fields("ollama.GenerateRequest.model", "ollama.GenerateRequest.prompt",
                    "ollama.GenerateRequest.options", "ollama.GenerateRequest.stream")
def test_generate_streams_ndjson_with_final_metrics_and_context(client: TestClient[Any]) -> None:
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hello there",
                                           "options": {"num_predict": 6, "temperature": 0}})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson(r.text)
    assert all(set(("model", "created_at", "response", "done")) <= set(o) for o in lines)
    assert all(RFC3339.match(o["created_at"]) for o in lines)
    assert [o["done"] for o in lines] == [False] * (len(lines) - 1) + [True]
    final = lines[-1]
    assert final["done_reason"] == "length"
    assert final["eval_count"] == 6 and final["prompt_eval_count"] > 0
    assert all(isinstance(final[k], int) and final[k] > 0 for k in METRICS)
    assert isinstance(final["context"], list) and all(isinstance(t, int) for t in final["context"])
    assert len("".join(o["response"] for o in lines)) == 6
    assert "context" not in lines[0] and "done_reason" not in lines[0]


@pytest.mark.fields("ollama.GenerateRequest.stream")
def test_generate_non_streaming_joins_text(client: TestClient[Any], harness: Harness) -> None:
    harness.fake.enqueue("Bonjour le monde")
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["response"] == "Bonjour le monde" and body["done"] is True and body["done_reason"] == "stop"
    assert body["model"] == "tiny"


@pytest.mark.fields("ollama.GenerateRequest.raw")
def test_generate_raw_has_no_context_and_rejects_template(client: TestClient[Any]) -> None:
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "x", "raw": True, "stream": False,
                                           "options": {"num_predict": 2}})
    assert r.status_code == 200 and "context" not in r.json()
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "x", "raw": True, "system": "s"})
    assert r.status_code == 400
    assert r.json() == {"error": "raw mode does not support template, system, or context"}


@pytest.mark.fields("ollama.ChatRequest.model", "ollama.ChatRequest.messages", "ollama.ChatRequest.stream",
                    "ollama.ChatMessage.role", "ollama.ChatMessage.content")
def test_chat_stream_and_non_stream(client: TestClient[Any], harness: Harness) -> None:
    harness.fake.enqueue("Hi! How are you?")
    r = client.post("/api/chat", json={"model": "tiny", "messages": [{"role": "USER", "content": "hello"}]})
    # the role was lowercased on the way in: the template (ChatML) rendered a "user" turn
    sent = [c.text for c in harness.fake.history if c.op == "generate"][-1]
    assert sent.endswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"), sent
    assert "USER" not in sent
    lines = ndjson(r.text)
    assert all(o["message"]["role"] == "assistant" for o in lines)
    assert "".join(o["message"].get("content", "") for o in lines) == "Hi! How are you?"
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop" and "context" not in lines[-1]
    harness.fake.enqueue("Fine.")
    r = client.post("/api/chat", json={"model": "tiny", "stream": False,
                                       "messages": [{"role": "user", "content": "hello"}]})
    body = r.json()
    assert body["message"] == {"role": "assistant", "content": "Fine."} and body["done"] is True
    assert all(k in body for k in METRICS)


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client: TestClient[Any]) -> None:
    r = client.post("/api/generate", json={"model": "tiny", "prompt": ""})
    *loading, line = ndjson(r.text)
    assert loading and all(o["status"] == "loading model" for o in loading)  # the fake reports half way
    assert line["done"] is True and line["done_reason"] == "load" and line["response"] == ""
    assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["tiny:latest"]
    r = client.post("/api/chat", json={"model": "tiny", "messages": [], "keep_alive": 0, "stream": False})
    body = r.json()
    assert body["done_reason"] == "unload" and body["message"]["role"] == "assistant"
    assert client.get("/api/ps").json() == {"models": []}


def test_streamed_load_sends_pull_style_progress_lines_first(client: TestClient[Any], tiny_gguf: Any) -> None:
    total = tiny_gguf.stat().st_size
    for path, body, text in (("/api/chat", {"messages": []}, "message"), ("/api/generate", {}, "response")):
        client.post("/api/chat", json={"model": "tiny", "messages": [], "keep_alive": 0})  # unloaded
        *loading, done = ndjson(client.post(path, json={"model": "tiny", **body}).text)
        # the fake backend reports its load half done (llama.cpp: each whole percent of the weights)
        assert [(o["status"], o["completed"], o["total"], o["done"]) for o in loading] == [
            ("loading model", total // 2, total, False)]
        empty = {"role": "assistant", "content": ""} if text == "message" else ""
        assert loading[0][text] == empty and loading[0]["model"] == "tiny"  # still a well-formed chunk
        assert done["done_reason"] == "load" and "status" not in done and "total" not in done
        # loaded already: no progress, only the final line; not streamed: one object without progress
        (again,) = ndjson(client.post(path, json={"model": "tiny", **body}).text)
        assert again["done_reason"] == "load"
    client.post("/api/chat", json={"model": "tiny", "messages": [], "keep_alive": 0})
    single = client.post("/api/chat", json={"model": "tiny", "messages": [], "stream": False}).json()
    assert single["done_reason"] == "load" and "status" not in single


def test_load_that_fails_before_any_progress_keeps_its_status(client: TestClient[Any]) -> None:
    r = client.post("/api/chat", json={"model": "tiny", "messages": [], "options": {"num_ctx": -5}})
    assert r.status_code == 400 and "error" in r.json()
    r = client.post("/api/chat", json={"model": "no-such-model", "messages": []})
    assert r.status_code == 404 and "not found" in r.json()["error"]


@pytest.mark.parametrize("keep_alive", ["10m", 120, -1, "1h30m"])
@pytest.mark.fields("ollama.GenerateRequest.keep_alive")
def test_keep_alive_forms_accepted(client: TestClient[Any], keep_alive: Any) -> None:
    r = client.post("/api/generate", json={"model": "tiny", "keep_alive": keep_alive, "stream": False})
    assert r.status_code == 200 and r.json()["done_reason"] == "load"
    (row,) = client.get("/api/ps").json()["models"]
    assert RFC3339.match(row["expires_at"])
    assert row["context_length"] > 0 and row["size"] > 0 and row["details"]["family"] == "llama"


def test_ps_shows_running_model_fields(client: TestClient[Any]) -> None:
    client.post("/api/generate", json={"model": "tiny", "stream": False})
    (row,) = client.get("/api/ps").json()["models"]
    assert row["name"] == row["model"] == "tiny:latest"
    assert len(row["digest"]) == 64 and row["size_vram"] == 0


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"", 400, "missing request body"),
    (b"{", 400, "invalid JSON"),
    (b"[]", 400, "invalid request body"),
    (b"null", 400, "invalid request body"),
    (b"[" * 50000 + b"]" * 50000, 400, "nested too deeply"),
    (b'{"model": "tiny\xff"}', 400, "not valid UTF-8"),
    (b'\xef\xbb\xbf{"model": "tiny"}', 400, "invalid JSON"),
    (b'{"model": "tiny",}', 400, "invalid JSON"),
    (b'{"model": "tiny", "options": {"num_ctx": "4096"}}', 400, "num_ctx"),
    (b'{"model": "tiny", "prompt": "x", "context": [-1]}', 400, "out of range"),
    (b'{"model": "tiny", "stream": "yes"}', 400, "'stream'"),
    (b'{"model": "tiny", "options": []}', 400, "'options'"),
    (b'{"model": "tiny", "images": [1]}', 400, "images"),
    (b'{"model": "tiny", "prompt": "x", "images": ["!!not base64"]}', 400, "not valid base64"),
    (b'{"model": "tiny", "prompt": "x", "suffix": "y"}', 400, "does not support insert"),
    (b'{"model": "tiny", "keep_alive": "3600"}', 400, "missing unit in duration"),
    (b'{"model": "tiny", "top_logprobs": 21}', 400, "top_logprobs must be between 0 and 20"),
    (b'{"model": "tiny", "format": "yaml"}', 400, "invalid format"),
    (b'{"model": "tiny", "think": "extreme"}', 400, "invalid think"),
    (b'{"prompt": "hi"}', 400, "model is required"),
    (b'{"model": "../etc/passwd", "prompt": "hi"}', 400, "invalid model name"),
    (b'{"model": "nope", "prompt": "hi"}', 404, 'model "nope:latest" not found'),
])
def test_generate_errors_use_native_envelope(client: TestClient[Any], body: bytes, status: int,
                                             message: str) -> None:
    r = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    payload = r.json()
    assert set(payload) == {"error"} and message in payload["error"]


def test_error_mid_stream_is_an_inband_line(client: TestClient[Any], harness: Harness) -> None:
    harness.fake.enqueue("abcdef", error="the backend fell over", error_after=3)
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
    assert r.status_code == 200
    lines = ndjson(r.text)
    assert "".join(o.get("response", "") for o in lines[:-1]) == "abc"
    assert lines[-1] == {"error": "the backend fell over"}


def test_error_before_first_chunk_keeps_its_status(client: TestClient[Any], harness: Harness) -> None:
    harness.fake.enqueue("abc", error="cannot start")
    r = client.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 500 and r.json() == {"error": "cannot start"}


@pytest.mark.fields("ollama.GenerateRequest.logprobs", "ollama.GenerateRequest.top_logprobs")
def test_logprobs_shapes(client: TestClient[Any]) -> None:
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False, "logprobs": True,
                                           "top_logprobs": 2, "options": {"num_predict": 4}})
    lps = r.json()["logprobs"]
    assert len(lps) == 4
    for e in lps:
        assert isinstance(e["token"], str) and e["logprob"] <= 0 and isinstance(e["bytes"], list)
        assert len(e["top_logprobs"]) == 2 and {"token", "logprob"} <= set(e["top_logprobs"][0])


@pytest.mark.fields("ollama.GenerateRequest.format")
def test_format_json_schema_constrains_output(client: TestClient[Any], harness: Harness) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "age?", "stream": False,
                                           "format": schema})
    assert r.status_code == 200
    request = harness.fake.history[-1].request
    assert request is not None and request.sampling.grammar  # the schema reached the sampler as a grammar


@pytest.mark.fields("ollama.EmbedRequest.model", "ollama.EmbedRequest.input",
                    "ollama.EmbedRequest.dimensions", "ollama.EmbeddingsRequest.model",
                    "ollama.EmbeddingsRequest.prompt")
def test_embed_and_legacy_embeddings(client: TestClient[Any]) -> None:
    r = client.post("/api/embed", json={"model": "tiny", "input": ["a cat", "a dog"]})
    body = r.json()
    assert r.status_code == 200 and body["model"] == "tiny" and len(body["embeddings"]) == 2
    norm = sum(x * x for x in body["embeddings"][0]) ** 0.5
    assert abs(norm - 1.0) < 1e-4 and body["prompt_eval_count"] > 0
    r = client.post("/api/embed", json={"model": "tiny", "input": "one", "dimensions": 8})
    assert len(r.json()["embeddings"][0]) == 8
    r = client.post("/api/embed", json={"model": "tiny", "input": []})
    assert r.status_code == 200 and r.json()["embeddings"] == []
    r = client.post("/api/embed", json={"model": "tiny", "input": 5})
    assert r.status_code == 400 and "'input'" in r.json()["error"]
    r = client.post("/api/embeddings", json={"model": "tiny", "prompt": "a cat"})
    assert r.status_code == 200 and len(r.json()["embedding"]) > 0
    assert client.post("/api/embeddings", json={"model": "tiny", "prompt": ""}).json() == {"embedding": []}


@pytest.mark.fields("ollama.CopyRequest.source", "ollama.CopyRequest.destination",
                    "ollama.DeleteRequest.model")
def test_tags_show_copy_delete(client: TestClient[Any]) -> None:
    models = client.get("/api/tags").json()["models"]
    names = {m["name"] for m in models}
    assert {"tiny:latest", "tiny-tools:latest"} <= names
    m = next(m for m in models if m["name"] == "tiny:latest")
    assert m["model"] == m["name"] and len(m["digest"]) == 64 and m["size"] > 0
    assert RFC3339.match(m["modified_at"]) and m["details"]["format"] == "gguf"
    assert client.head("/api/tags").status_code == 200

    r = client.post("/api/copy", json={"source": "tiny", "destination": "tiny-copy"})
    assert r.status_code == 200 and r.content == b""
    assert "tiny-copy:latest" in {m["name"] for m in client.get("/api/tags").json()["models"]}
    r = client.post("/api/copy", json={"source": "nope", "destination": "x"})
    assert r.status_code == 404 and "not found" in r.json()["error"]

    r = client.request("DELETE", "/api/delete", json={"model": "tiny-copy"})
    assert r.status_code == 200 and r.content == b""
    assert "tiny-copy:latest" not in {m["name"] for m in client.get("/api/tags").json()["models"]}
    r = client.request("DELETE", "/api/delete", json={"model": "tiny-copy"})
    assert r.status_code == 404
    r = client.request("DELETE", "/api/delete", json={"model": "a/../../b"})
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]


@pytest.mark.fields("ollama.ShowRequest.model")
def test_show_has_model_info(client: TestClient[Any]) -> None:
    r = client.post("/api/show", json={"model": "tiny"})
    body = r.json()
    assert r.status_code == 200 and isinstance(body["model_info"], dict)
    assert body["model_info"]["general.architecture"] == "llama"
    assert body["modelfile"].startswith("# Modelfile generated by")
    assert client.post("/api/show", json={"name": "nope"}).status_code == 404


@pytest.mark.fields("ollama.CreateRequest.model", "ollama.CreateRequest.files", "ollama.CreateRequest.from",
                    "ollama.CreateRequest.stream")
def test_blobs_head_post_and_create(client: TestClient[Any], tiny_gguf: Any) -> None:
    data = tiny_gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.head(f"/api/blobs/{digest}").status_code == 200  # the seed store holds it
    other = b"not a model, just bytes"
    d2 = "sha256:" + hashlib.sha256(other).hexdigest()
    assert client.head(f"/api/blobs/{d2}").status_code == 404
    assert client.post(f"/api/blobs/{d2}", content=other).status_code == 201
    assert client.post(f"/api/blobs/{d2}", content=other).status_code == 200
    assert client.head(f"/api/blobs/{d2}").status_code == 200
    bad = "sha256:" + "0" * 64
    r = client.post(f"/api/blobs/{bad}", content=b"xyz")
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    assert client.head(f"/api/blobs/{bad}").status_code == 404
    r = client.post("/api/blobs/sha256:..%2F..%2Fx", content=b"xyz")
    assert r.status_code in (400, 404)

    r = client.post("/api/create", json={"model": "made", "files": {"tiny.gguf": digest},
                                         "system": "Be brief.", "parameters": {"temperature": 0.1}})
    lines = ndjson(r.text)
    assert r.status_code == 200 and lines[-1] == {"status": "success"}
    r = client.post("/api/create", json={"model": "made2", "from": "made", "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    names = {m["name"] for m in client.get("/api/tags").json()["models"]}
    assert {"made:latest", "made2:latest"} <= names
    r = client.post("/api/create", json={"model": "bad", "files": {"../x.gguf": digest}, "stream": False})
    assert r.status_code == 400


@pytest.mark.fields("ollama.TransferRequest.model", "ollama.TransferRequest.insecure",
                    "ollama.TransferRequest.stream")
def test_pull_and_push_with_the_in_process_registry(client: TestClient[Any], tiny_gguf: Any) -> None:
    with TestRegistry() as reg:
        reg.add_model("library/pulled:v1", [("application/vnd.ollama.image.model", tiny_gguf.read_bytes())])
        name = f"{reg.host}/library/pulled:v1"
        r = client.post("/api/pull", json={"model": name, "insecure": True})
        lines = ndjson(r.text)
        assert r.status_code == 200 and lines[0]["status"] == "pulling manifest"
        assert lines[-1] == {"status": "success"}
        assert any(o.get("digest") and o.get("total") for o in lines)
        assert name in {m["name"] for m in client.get("/api/tags").json()["models"]}
        # an unknown model: the error arrives in-band after "pulling manifest" (HTTP 200), or as a status
        r = client.post("/api/pull", json={"model": f"{reg.host}/library/absent:v1", "insecure": True,
                                           "stream": False})
        assert r.status_code >= 400 and "error" in r.json()
        r = client.post("/api/push", json={"model": name, "insecure": True, "stream": False})
        assert r.status_code == 200 and r.json() == {"status": "success"}
    r = client.post("/api/pull", json={"model": "../x", "stream": False})
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]


def test_wrong_method_and_unknown_route(client: TestClient[Any]) -> None:
    assert client.get("/api/generate").status_code == 405
    assert client.get("/api/nothing-here").status_code == 404


@pytest.mark.fields("ollama.ChatRequest.tools", "ollama.ChatRequest.think", "ollama.GenerateRequest.think")
def test_native_tool_calls_and_thinking_shapes(client: TestClient[Any], harness: Harness) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    harness.fake.enqueue('<tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}</tool_call>')
    r = client.post("/api/chat", json={"model": "tiny-tools", "tools": tools,
                                       "messages": [{"role": "user", "content": "weather?"}]})
    lines = ndjson(r.text)
    calls = [c for o in lines for c in o["message"].get("tool_calls", [])]
    assert len(calls) == 1  # emitted whole, once
    (call,) = calls
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Lima"}, "index": 0}
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    r = client.post("/api/chat", json={"model": "tiny", "tools": tools, "stream": False,
                                       "messages": [{"role": "user", "content": "weather?"}]})
    assert r.status_code == 400 and "does not support tools" in r.json()["error"]

    harness.fake.enqueue("Hmm, two and two.</think>Four.")
    r = client.post("/api/generate", json={"model": "tiny-think", "prompt": "2+2?", "think": True,
                                           "stream": False})
    body = r.json()
    assert body["thinking"] == "Hmm, two and two." and body["response"] == "Four."
    harness.fake.enqueue("Short thought.</think>Yes.")
    r = client.post("/api/chat", json={"model": "tiny-think", "think": "high", "stream": False,
                                       "messages": [{"role": "user", "content": "ok?"}]})
    assert r.json()["message"] == {"role": "assistant", "content": "Yes.", "thinking": "Short thought."}


@pytest.mark.fields("ollama.CreateRequest.draft_files", "ollama.CreateRequest.draft_quantize")
def test_create_with_a_draft_model(client: TestClient[Any], tiny_gguf: Any, tmp_path: Any) -> None:
    """draft_files: stored as a draft layer and shown; one that cannot draft, or draft_quantize without a
    draft, is a 400; draft_num_predict is an option with bounds."""
    from corral.testing.tinymodel import DEFAULT_WORDS, write_tiny_gguf

    digest = "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    write_tiny_gguf(tmp_path / "other.gguf", vocab=[*DEFAULT_WORDS, "zebra", "quagga"])
    other = (tmp_path / "other.gguf").read_bytes()
    other_digest = "sha256:" + hashlib.sha256(other).hexdigest()
    assert client.post(f"/api/blobs/{other_digest}", content=other).status_code == 201
    r = client.post("/api/create", json={"model": "spec", "files": {"t.gguf": digest},
                                         "draft_files": {"d.gguf": digest}, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    show = client.post("/api/show", json={"model": "spec"}).json()
    assert any(line.startswith("DRAFT ") for line in show["modelfile"].splitlines())
    assert show["draft_info"]["general.architecture"] == "llama"
    r = client.post("/api/create", json={"model": "bad", "files": {"t.gguf": digest},
                                         "draft_files": {"o.gguf": other_digest}, "stream": False})
    assert r.status_code == 400 and "cannot draft for this model" in r.json()["error"]
    r = client.post("/api/create", json={"model": "bad", "from": "spec", "draft_quantize": "q8_0",
                                         "stream": False})
    assert r.status_code == 400 and "draft_quantize requires a draft model" in r.json()["error"]
    r = client.post("/api/generate", json={"model": "spec", "prompt": "hi", "stream": False,
                                           "options": {"draft_num_predict": 65}})
    assert r.status_code == 400 and "draft_num_predict" in r.json()["error"]
