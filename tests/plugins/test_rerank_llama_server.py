"""corral's /v1/rerank on the cpu backend gives llama-server's scores for the same tiny reranker, and its
/tokenize with ``with_pieces`` llama-server's pieces for the same model and text."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from corral.config import Config
from corral.engine import Engine
from corral.runner import local_runners
from corral.server.app import create_app
from corral.store.store import Store
from corral.testing.live import free_port
from corral.testing.tinyreranker import write_tiny_reranker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from _tools import find_tool, stage_tool  # noqa: E402

QUERY = "what is the capital of France"
DOCS = ["the sky is blue", "Paris is the capital of France", "France has a capital", "hello world",
        "once upon a time there was a cat", "The capital of France is Paris"]


@pytest.fixture(scope="module")
def llama_server(cpu_lib: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama-server from the same pin and flags, built by build_backends.py if it is not yet (cached)."""
    subprocess.run([sys.executable, str(ROOT / "build_backends.py"), "--tools"], check=True, timeout=3600,
                   capture_output=True)
    return stage_tool(find_tool("llama-server"), tmp_path_factory.mktemp("llama-server"))


def _reference(exe: Path, model: Path, body: dict[str, Any], path: str = "/v1/rerank",
               flags: tuple[str, ...] = ("--reranking",)) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen([str(exe), "-m", str(model), *flags, "--host", "127.0.0.1", "--port",
                             str(port), "-c", "1024", "-np", "1", "--no-webui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "llama-server did not start"
            time.sleep(0.1)
        return httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=60).json()  # type: ignore[no-any-return]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def corral_client(cpu_lib: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    root = tmp_path_factory.mktemp("rerank-store")
    config = Config(models=root / "models", home=root, backend="cpu", context_length=1024)
    store = Store(config.models)
    engine = Engine(config, store, runner_factory=local_runners(config, backend="cpu"))
    app = create_app(config, engine=engine, store=store)
    with TestClient(app, base_url="http://127.0.0.1:11434") as client:
        yield client


def _create(client: TestClient[Any], name: str, path: Path) -> None:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    client.post(f"/api/blobs/{digest}", content=data)
    r = client.post("/api/create", json={"model": name, "files": {path.name: digest}, "stream": False})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("template", [True, False], ids=["rerank-template", "bos-eos-sep"])
def test_scores_match_llama_server(template: bool, llama_server: Path, corral_client: TestClient[Any],
                                   tmp_path: Path) -> None:
    path = write_tiny_reranker(tmp_path / f"rr-{template}.gguf", **({} if template else {"template": None}))
    name = f"rr-{'t' if template else 's'}"
    _create(corral_client, name, path)
    body = {"query": QUERY, "documents": DOCS}
    ref = _reference(llama_server, path, body)
    got = corral_client.post("/v1/rerank", json={"model": name, **body})
    assert got.status_code == 200, got.text
    mine = got.json()
    want = {r["index"]: r["relevance_score"] for r in ref["results"]}
    have = {r["index"]: r["relevance_score"] for r in mine["results"]}
    assert set(have) == set(range(len(DOCS)))
    worst = max(abs(have[i] - want[i]) for i in want)
    print(f"{name}: max |corral - llama-server| = {worst:.2e} over {len(DOCS)} documents; "
          f"scores {[round(have[i], 6) for i in range(len(DOCS))]}")
    assert worst <= 1e-4
    assert [r["index"] for r in mine["results"]] == [r["index"] for r in ref["results"]]  # same order
    assert mine["usage"]["prompt_tokens"] == ref["usage"]["prompt_tokens"]  # the same pair tokens
    top = corral_client.post("/v1/rerank", json={"model": name, **body, "top_n": 3}).json()["results"]
    assert [r["index"] for r in top] == [r["index"] for r in ref["results"][:3]]


@pytest.mark.fields("llamaserver.TokenizeRequest.with_pieces")
def test_tokenize_with_pieces_matches_llama_server(llama_server: Path, corral_client: TestClient[Any],
                                                   tiny_gguf: Path) -> None:
    _create(corral_client, "tiny-pieces", tiny_gguf)
    # multi-byte characters (pieces that are not whole UTF-8 come back as byte values), spaces, a newline
    body = {"content": "héllo 世界 🙂\n  the end", "with_pieces": True, "add_special": True}
    ref = _reference(llama_server, tiny_gguf, body, path="/tokenize", flags=())
    got = corral_client.post("/tokenize", json={"model": "tiny-pieces", **body})
    assert got.status_code == 200, got.text
    print(f"llama-server: {ref['tokens'][:8]}...")
    assert got.json() == ref and any(isinstance(t["piece"], list) for t in ref["tokens"])
