"""/api/version, /api/tokenize, /api/detokenize, llama-server's /tokenize, /detokenize and the rerank API."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

import corral
from corral.testing.fake import BOS, BYTE_OFFSET
from corral.testing.tinyreranker import write_tiny_reranker

QUERY = "what is the capital of France"
DOCS = ["the sky is blue", "Paris is the capital of France", "France has a capital", "hello world"]


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".")[:3])


def test_version_reports_the_ollama_api_and_corral(client: TestClient[Any]) -> None:
    body = client.get("/api/version").json()
    assert _version_tuple(body["version"]) >= (0, 13, 4)  # codex --oss refuses anything older
    assert body["corral_version"] == corral.__version__


@pytest.mark.fields("ollama.TokenizeRequest.model", "ollama.TokenizeRequest.content",
                    "ollama.TokenizeRequest.add_special", "ollama.TokenizeRequest.parse_special",
                    "ollama.DetokenizeRequest.model", "ollama.DetokenizeRequest.tokens",
                    "ollama.DetokenizeRequest.render_special")
def test_tokenize_and_detokenize(client: TestClient[Any]) -> None:
    r = client.post("/api/tokenize", json={"model": "tiny", "content": "hi<|im_end|>"})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert tokens[0] == BOS and tokens[1:3] == [ord("h") + BYTE_OFFSET, ord("i") + BYTE_OFFSET]
    assert len(tokens) == 4  # the control token's text became one token
    plain = client.post("/api/tokenize", json={"model": "tiny", "content": "hi<|im_end|>",
                                               "add_special": False, "parse_special": False}).json()["tokens"]
    assert plain[0] != BOS and len(plain) == 2 + len("<|im_end|>")
    back = client.post("/api/detokenize", json={"model": "tiny", "tokens": tokens[1:]})
    assert back.json() == {"model": "tiny", "content": "hi<|im_end|>"}
    hidden = client.post("/api/detokenize", json={"model": "tiny", "tokens": tokens[1:],
                                                  "render_special": False})
    assert hidden.json()["content"] == "hi"


def test_tokenize_errors(client: TestClient[Any]) -> None:
    assert client.post("/api/tokenize", json={"model": "absent", "content": "x"}).status_code == 404
    r = client.post("/api/tokenize", json={"model": "tiny", "content": "x", "bogus": 1})
    assert r.status_code == 400 and "bogus" in r.json()["error"]
    assert client.post("/api/tokenize", json={"model": "tiny"}).json() == {"error": "content is required"}
    r = client.post("/api/detokenize", json={"model": "tiny", "tokens": [10**9]})
    assert r.status_code == 400 and "out of range" in r.json()["error"]


def test_llama_server_tokenize_shape(client: TestClient[Any]) -> None:
    r = client.post("/tokenize", json={"model": "tiny", "content": "ab"})
    assert r.json() == {"tokens": [ord("a") + BYTE_OFFSET, ord("b") + BYTE_OFFSET]}  # no BOS by default
    r = client.post("/tokenize", json={"model": "tiny", "content": "ab", "add_special": True})
    assert r.json()["tokens"][0] == BOS
    r = client.post("/detokenize", json={"model": "tiny", "tokens": [BOS, 100]})
    assert r.json() == {"content": "<s>a"}
    r = client.post("/tokenize", json={"model": "tiny", "content": "aé", "with_pieces": True,
                                       "add_special": True})
    # compat(llama-server): the piece's text, or its byte values where it is not whole UTF-8
    assert r.json() == {"tokens": [{"id": BOS, "piece": "<s>"}, {"id": ord("a") + BYTE_OFFSET, "piece": "a"},
                                   {"id": 0xC3 + BYTE_OFFSET, "piece": [0xC3]},
                                   {"id": 0xA9 + BYTE_OFFSET, "piece": [0xA9]}]}


@pytest.fixture
def reranker(client: TestClient[Any], tmp_path: Path) -> str:
    """A tiny reranker created through the API (blob upload, then create)."""
    data = write_tiny_reranker(tmp_path / "rr.gguf").read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    r = client.post("/api/create", json={"model": "rr", "files": {"rr.gguf": digest}, "stream": False})
    assert r.status_code == 200, r.text
    return "rr"


@pytest.mark.fields(
    "llamaserver.RerankRequest.query", "llamaserver.RerankRequest.documents",
    "llamaserver.RerankRequest.texts",
    "llamaserver.RerankRequest.top_n", "llamaserver.RerankRequest.return_documents",
    "llamaserver.RerankRequest.return_text", "llamaserver.DocumentObject.text",
)
def test_rerank_sorted_top_n_and_documents(client: TestClient[Any], reranker: str) -> None:
    show = client.post("/api/show", json={"model": reranker}).json()
    assert show["capabilities"] == ["rerank"]
    r = client.post("/v1/rerank", json={"model": reranker, "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(DOCS)
    assert body["results"][0]["index"] == 1  # the fake scores by word overlap
    assert body["object"] == "list" and body["usage"]["prompt_tokens"] > 0
    top = client.post("/rerank", json={"model": reranker, "query": QUERY, "documents": DOCS, "top_n": 2,
                                       "return_documents": True}).json()["results"]
    assert [x["index"] for x in top] == [x["index"] for x in body["results"][:2]]
    assert top[0]["document"] == {"text": DOCS[1]}
    objects = client.post("/v1/rerank", json={"model": reranker, "query": QUERY,
                                              "documents": [{"text": d} for d in DOCS]}).json()
    assert objects["results"] == body["results"]
    tei = client.post("/rerank", json={"model": reranker, "query": QUERY, "texts": DOCS, "return_text": True})
    assert tei.json()[0] == {"index": 1, "score": scores[0], "text": DOCS[1]}


@pytest.mark.fields("llamaserver.RerankRequest.model", "llamaserver.RerankRequest.query",
                    "llamaserver.RerankRequest.documents", "llamaserver.RerankRequest.top_n")
def test_rerank_errors(client: TestClient[Any], reranker: str) -> None:
    r = client.post("/v1/rerank", json={"model": "tiny", "query": QUERY, "documents": DOCS})
    assert r.status_code == 400 and "does not support rerank" in r.json()["error"]["message"]
    for bad, word in (({"query": QUERY, "documents": []}, "documents"), ({"documents": DOCS}, "query"),
                      ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
                      ({"query": QUERY, "documents": DOCS, "colour": 1}, "colour")):
        r = client.post("/rerank", json={"model": reranker, **bad})
        assert r.status_code == 400 and word in r.json()["error"]["message"], r.text
    r = client.post("/v1/rerank", json={"model": "absent", "query": "q", "documents": ["d"]})
    assert r.status_code == 404


@pytest.mark.fields(
    "llamaserver.TokenizeRequest.model", "llamaserver.TokenizeRequest.content",
    "llamaserver.TokenizeRequest.add_special", "llamaserver.TokenizeRequest.parse_special",
    "llamaserver.TokenizeRequest.keep_alive", "llamaserver.TokenizeRequest.with_pieces",
    "llamaserver.DetokenizeRequest.model", "llamaserver.DetokenizeRequest.tokens",
    "llamaserver.DetokenizeRequest.keep_alive",
)
def test_llama_server_tokenize_fields(client: TestClient[Any]) -> None:
    def tokens(**body: Any) -> list[int]:
        r = client.post("/tokenize", json={"model": "tiny", "content": "a<|im_end|>", **body})
        assert r.status_code == 200, r.text
        return r.json()["tokens"]  # type: ignore[no-any-return]

    assert tokens() == [ord("a") + BYTE_OFFSET, tokens()[1]] and tokens(add_special=True)[0] == BOS
    assert len(tokens(parse_special=False)) == 1 + len("<|im_end|>")  # the control token's text, spelled
    assert client.post("/tokenize", json={"model": "absent", "content": "x"}).status_code == 404
    r = client.post("/tokenize", json={"model": "tiny"})
    assert r.status_code == 400 and "content" in r.json()["error"]["message"]
    r = client.post("/detokenize", json={"model": "tiny", "tokens": tokens(), "keep_alive": 0})
    assert r.json() == {"content": "a<|im_end|>"}
    assert client.get("/api/ps").json()["models"] == []  # keep_alive 0: unloaded once answered
    tokens(keep_alive="5m")
    assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["tiny:latest"]
    for path, body in (("/tokenize", {"content": "x"}), ("/detokenize", {"tokens": [100]})):
        r = client.post(path, json={"model": "tiny", "keep_alive": "soon", **body})
        assert r.status_code == 400 and "keep_alive" in r.json()["error"]["message"]
    assert client.post("/detokenize", json={"model": "absent", "tokens": [1]}).status_code == 404
    r = client.post("/detokenize", json={"model": "tiny"})
    assert r.status_code == 400 and "tokens" in r.json()["error"]["message"]
    r = client.post("/tokenize", json={"model": "tiny", "content": "a<|im_end|>", "with_pieces": True})
    assert r.json() == {"tokens": [{"id": ord("a") + BYTE_OFFSET, "piece": "a"},
                                   {"id": tokens()[1], "piece": "<|im_end|>"}]}


@pytest.mark.fields(
    "llamaserver.RerankRequest.texts", "llamaserver.RerankRequest.keep_alive",
    "llamaserver.RerankRequest.options", "llamaserver.DocumentObject.text",
)
def test_rerank_options_keep_alive_and_document_forms(client: TestClient[Any], reranker: str,
                                                      harness: Any) -> None:
    r = client.post("/rerank", json={"model": reranker, "query": QUERY, "documents": DOCS, "texts": DOCS})
    assert r.status_code == 400 and "not both" in r.json()["error"]["message"]
    r = client.post("/rerank", json={"model": reranker, "query": QUERY, "documents": [{"txt": "x"}]})
    assert r.status_code == 400 and "txt" in r.json()["error"]["message"]
    r = client.post("/rerank", json={"model": reranker, "query": QUERY, "documents": DOCS,
                                     "options": {"num_ctx": 64}, "keep_alive": 0})
    assert r.status_code == 200, r.text
    load = [c for c in harness.fake.history if c.op == "load"][-1]
    assert load.options is not None and load.options.num_ctx == 64
    assert client.get("/api/ps").json()["models"] == []  # keep_alive 0
    r = client.post("/rerank", json={"model": reranker, "query": QUERY, "documents": DOCS,
                                     "options": {"num_ctx": "big"}})
    assert r.status_code == 400 and "num_ctx" in r.json()["error"]["message"]
