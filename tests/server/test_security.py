"""Safe defaults: Host check (DNS rebinding), CORS allowlist, cross-site POSTs, API key, body limit."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from litestar.testing import TestClient
from server_support import BASE_URL, Harness

from corral.server.security import OriginPolicy, host_allowed, is_loopback_bind


@pytest.mark.parametrize("host", ["evil.example", "x.internal", "a.local", "a.localhost", "", "8.8.8.8",
                                  "localhost.evil.example", "127.0.0.1.nip.io"])
def test_rebinding_hosts_are_refused(client: TestClient[Any], host: str) -> None:
    r = client.get("/api/tags", headers={"host": host})
    assert r.status_code == 403 and "Host" in r.json()["error"]


@pytest.mark.parametrize("host", ["localhost:11434", "127.0.0.1:11434", "[::1]:11434", "localhost",
                                  "192.168.1.5:11434", "0.0.0.0"])
def test_local_hosts_are_allowed(client: TestClient[Any], host: str) -> None:
    assert client.get("/api/tags", headers={"host": host}).status_code == 200


def test_host_check_only_on_loopback_bind(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(host="0.0.0.0")
    with TestClient(h.app, base_url=BASE_URL) as c:
        assert c.get("/api/version", headers={"host": "my-server.example"}).status_code == 200
    assert is_loopback_bind("127.0.0.1") and is_loopback_bind("::1") and not is_loopback_bind("0.0.0.0")
    assert not host_allowed("[::1") and host_allowed("[::1]")


def test_cors_allows_local_origins_and_denies_others(client: TestClient[Any]) -> None:
    ok = client.get("/api/version", headers={"origin": "http://localhost:3000"})
    assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "access-control-allow-credentials" not in ok.headers
    bad = client.get("/api/version", headers={"origin": "https://evil.example"})
    assert bad.status_code == 200 and "access-control-allow-origin" not in bad.headers
    pre = client.options("/v1/chat/completions", headers={
        "origin": "http://127.0.0.1:8080", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, x-stainless-os, authorization"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
    assert "x-stainless-os" in pre.headers["access-control-allow-headers"]
    denied = client.options("/api/chat", headers={"origin": "https://evil.example",
                                                  "access-control-request-method": "POST"})
    assert denied.status_code == 403 and "access-control-allow-origin" not in denied.headers


def test_configured_origins(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(origins=("https://app.example.com", "https://*.trusted.dev"))
    with TestClient(h.app, base_url=BASE_URL) as c:
        for origin in ("https://app.example.com", "https://x.trusted.dev"):
            r = c.get("/api/version", headers={"origin": origin})
            assert r.headers["access-control-allow-origin"] == origin
        assert "access-control-allow-origin" not in c.get("/", headers={"origin": "https://app.example.org"}).headers
    star = OriginPolicy(["*"])
    assert star.allowed("https://anything.example") and star.allow_origin_value("https://a.b") == "*"
    assert not OriginPolicy([]).allowed("null") and OriginPolicy([]).allowed("tauri://localhost")


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_cross_site_simple_posts_are_refused(client: TestClient[Any], ctype: str) -> None:
    for path, method in (("/api/delete", "DELETE"), ("/api/copy", "POST"), ("/api/pull", "POST"),
                         ("/api/create", "POST"), ("/api/push", "POST")):
        r = client.request(method, path, content=b'{"model": "tiny", "source": "tiny", "destination": "t2"}',
                           headers={"content-type": ctype, "origin": "https://evil.example"})
        assert r.status_code == 403, (path, r.text)
    names = {m["name"] for m in client.get("/api/tags").json()["models"]}
    assert "tiny:latest" in names and "t2:latest" not in names  # nothing changed


def test_cross_site_fetch_metadata_refused_but_curl_style_posts_work(client: TestClient[Any]) -> None:
    r = client.post("/api/copy", json={"source": "tiny", "destination": "t3"},
                    headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    # curl -d sends form-urlencoded without an Origin: that is not a browser, and must keep working.
    r = client.post("/api/copy", content=b'{"source": "tiny", "destination": "t4"}',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200


def test_api_key_covers_every_route_but_health(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(api_key="s3cret-key")
    with TestClient(h.app, base_url=BASE_URL) as c:
        assert c.get("/").status_code == 200 and c.get("/api/version").status_code == 200
        assert c.head("/").status_code == 200
        routes = [("GET", "/api/tags"), ("GET", "/api/ps"), ("POST", "/api/generate"), ("POST", "/api/chat"),
                  ("POST", "/api/embed"), ("POST", "/api/embeddings"), ("POST", "/api/show"),
                  ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("POST", "/api/pull"),
                  ("POST", "/api/push"), ("POST", "/api/create"), ("HEAD", "/api/blobs/sha256:" + "0" * 64),
                  ("POST", "/api/blobs/sha256:" + "0" * 64), ("GET", "/metrics"),
                  ("GET", "/openapi/openapi.json"),
                  ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
                  ("GET", "/v1/models"), ("GET", "/v1/models/tiny")]
        for method, path in routes:
            for auth in (None, "Bearer wrong", "Bearer S3CRET-KEY", "s3cret-key", "Basic s3cret-key"):
                headers = {"authorization": auth} if auth else {}
                r = c.request(method, path, json={"model": "tiny"}, headers=headers)
                assert r.status_code == 401, (method, path, auth)
        body = c.get("/v1/models").json()
        assert body["error"]["type"] == "authentication_error"
        assert c.get("/api/tags").json() == {"error": "unauthorized: missing or invalid API key"}
        good = {"authorization": "Bearer s3cret-key"}
        assert c.get("/api/tags", headers=good).status_code == 200
        r = c.post("/api/generate", json={"model": "tiny", "stream": False}, headers=good)
        assert r.status_code == 200


def test_body_limit(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_body=2048)
    with TestClient(h.app, base_url=BASE_URL) as c:
        big = b'{"model": "tiny", "prompt": "' + b"x" * 4096 + b'"}'
        r = c.post("/api/generate", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "too large" in r.json()["error"]

        def chunked() -> Any:  # no Content-Length: the limit is counted while reading
            for _ in range(8):
                yield b"x" * 1024

        r = c.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "too large" in r.json()["error"]["message"]
        small = c.post("/api/generate", json={"model": "tiny", "stream": False})
        assert small.status_code == 200
        # blob uploads are raw model files: exempt from the JSON limit
        data = b"y" * 8192
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        assert c.post(f"/api/blobs/{d}", content=data).status_code == 201
