"""Operations: /metrics in Prometheus text format, the request log line, the OpenAPI schema."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from litestar.testing import TestClient
from server_support import ndjson

from corral.server.metrics import Counter, Histogram, ServerMetrics

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+(Inf)?$')


def _metrics(client: TestClient[Any]) -> dict[str, float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for line in r.text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE "))
            continue
        assert SAMPLE.match(line), line
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


def test_metrics_count_requests_tokens_and_latency(client: TestClient[Any]) -> None:
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "options": {"num_predict": 5}})
    final = ndjson(r.text)[-1]
    client.post("/api/generate", json={"model": "nope", "prompt": "hi"})
    client.get(f"/api/blobs/sha256:{'a' * 64}")
    m = _metrics(client)
    assert m['corral_http_requests_total{route="/api/generate",method="POST",status="200"}'] == 1
    assert m['corral_http_requests_total{route="/api/generate",method="POST",status="404"}'] == 1
    # the route template, not the digest, labels blob requests (bounded cardinality)
    assert not any("aaaa" in k for k in m)
    # canonical model names label the token series, as they do the loaded-model gauges
    assert m['corral_generated_tokens_total{model="tiny:latest"}'] == final["eval_count"] == 5
    assert m['corral_prompt_tokens_total{model="tiny:latest"}'] == final["prompt_eval_count"]
    assert m["corral_time_to_first_token_seconds_count"] == 1
    assert m['corral_time_to_first_token_seconds_bucket{le="+Inf"}'] == 1
    assert m["corral_time_per_output_token_seconds_count"] == 1
    assert m['corral_loaded_models{model="tiny:latest"}'] == 1
    assert m['corral_model_memory_bytes{kind="total",model="tiny:latest"}'] > 0
    assert m["corral_queue_depth"] == 0
    assert m["corral_http_requests_in_flight"] == 1  # this scrape


def test_metrics_label_the_agent_routes(client: TestClient[Any]) -> None:
    client.post("/v1/messages?beta=true", json={"model": "tiny", "max_tokens": 4,
                                                "messages": [{"role": "user", "content": "hi"}]})
    client.post("/v1/responses", json={"model": "tiny", "input": "hi", "max_output_tokens": 4})
    client.post("/v1/responses", json={"model": "tiny", "input": "hi", "bogus": 1})
    client.post("/api/tokenize", json={"model": "tiny", "content": "hi"})
    client.post("/tokenize", json={"model": "tiny", "content": "hi"})
    client.post("/v1/rerank", json={"model": "tiny", "query": "q", "documents": ["d"]})
    m = _metrics(client)
    for route, status in (("/v1/messages", 200), ("/v1/responses", 200), ("/v1/responses", 400),
                          ("/api/tokenize", 200), ("/tokenize", 200), ("/v1/rerank", 400)):
        assert m[f'corral_http_requests_total{{route="{route}",method="POST",status="{status}"}}'] >= 1, route
    assert m['corral_generated_tokens_total{model="tiny:latest"}'] == 8  # both agent APIs' turns are counted


def test_histogram_and_counter_text() -> None:
    h = Histogram("x_seconds", "help", (0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    lines = list(h.render())
    assert 'x_seconds_bucket{le="0.1"} 1' in lines and 'x_seconds_bucket{le="1"} 2' in lines
    assert 'x_seconds_bucket{le="+Inf"} 3' in lines and "x_seconds_count 3" in lines
    c = Counter("y_total", "help", ("model",))
    c.inc('a"b\\c\nd', amount=2)
    assert 'y_total{model="a\\"b\\\\c\\nd"} 2' in list(c.render())
    assert ServerMetrics().render().endswith("\n")


def test_request_log_line(client: TestClient[Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="corral.server.access"):
        client.get("/api/tags")
        client.post("/api/show", json={"model": "nope"})
    lines = [r.getMessage() for r in caplog.records if r.name == "corral.server.access"]
    assert any(re.fullmatch(r"GET /api/tags 200 \d+\.\dms", line) for line in lines), lines
    assert any(re.fullmatch(r"POST /api/show 404 \d+\.\dms", line) for line in lines), lines


def test_openapi_schema_is_served_and_describes_the_wire(client: TestClient[Any]) -> None:
    r = client.get("/openapi/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for p in ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/tags", "/api/ps",
              "/api/show", "/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete",
              "/api/blobs/{digest}", "/api/version", "/", "/v1/chat/completions", "/v1/completions",
              "/v1/embeddings", "/v1/models", "/v1/models/{model}", "/metrics", "/v1/messages",
              "/v1/messages/count_tokens", "/v1/responses", "/v1/responses/{response_id}", "/api/tokenize",
              "/api/detokenize", "/tokenize", "/detokenize", "/v1/rerank", "/rerank"):
        assert p in paths, p
    schemas = spec["components"]["schemas"]
    gen = schemas["GenerateRequest"]["properties"]
    assert {"model", "prompt", "stream", "options", "keep_alive", "format", "think"} <= set(gen)
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert {"messages", "stream_options", "response_format", "tools"} <= set(chat)
    assert "GenerateResponse" in schemas and "ChatCompletion" in schemas
    assert "done" in schemas["GenerateResponse"]["required"]
