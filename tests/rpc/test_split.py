"""Gemma 3 270M split over two `corral worker`s on loopback: same tokens as the CPU, every request feature,
`corral backends`, and a worker killed mid-stream."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from rpc_cluster import Server, Worker, clean_env

from corral.testing.live import free_port
from corral_plugins.rpc.probe import probe_worker

pytestmark = pytest.mark.gemma

PROMPTS = ["Why is the sky blue?", "Write a haiku about autumn leaves."]
# Without speculation: the two servers' greedy answers are compared, and a server's drafts depend on
# what it served before (how far its guesses held), which moves near-ties by the shapes of the batches a
# token is verified in (README, speculative decoding).
SETTINGS = {"CORRAL_CONTEXT_LENGTH": "1024", "CORRAL_NUM_PARALLEL": "2", "CORRAL_SPECULATIVE": "0"}


class Cluster:
    def __init__(self, workers: list[Worker], rpc: Server, cpu: Server) -> None:
        self.workers, self.rpc, self.cpu = workers, rpc, cpu
        self._reference: dict[str, dict[str, Any]] = {}

    def reference(self, prompt: str) -> dict[str, Any]:
        """The local CPU's greedy answer to ``prompt`` (computed once: the CPU side never changes)."""
        if prompt not in self._reference:
            self._reference[prompt] = self.cpu.generate(prompt)
        return self._reference[prompt]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gemma_models: Path) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("rpc-split")
    workers = [Worker(root, f"worker{i}") for i in range(2)]
    # The reference: the local CPU backend computing with the kernels a CPU worker runs (no repacked
    # weights: llama.cpp cannot place repacked weights on an RPC device, and they round differently).
    cpu = Server(root, "cpu", gemma_models, "--backend", "cpu", CORRAL_NOREPACK="1", **SETTINGS)
    rpc = Server(root, "rpc", gemma_models, "--workers", ",".join(w.endpoint for w in workers), **SETTINGS)
    procs = [*workers, cpu, rpc]
    try:
        for w in workers:
            w.start()
        cpu.start()
        for w in workers:
            w.wait_ready()
        rpc.start().wait_ready()
        cpu.wait_ready()
        yield Cluster(workers, rpc, cpu)
    finally:
        for p in procs:
            p.stop()


def chat(server: Server, messages: list[dict[str, str]], **fields: Any) -> tuple[str, list[dict[str, Any]]]:
    """A greedy streaming /api/chat: (the whole content, every NDJSON object)."""
    body = {"model": "gemma3:270m", "messages": messages, "stream": True, "options": server.options(),
            **fields}
    with server.http.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200, r.read()
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True, lines[-1]
    return "".join(x["message"]["content"] for x in lines), lines


def test_backends_lists_workers_and_their_devices(cluster: Cluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    endpoints = [w.endpoint for w in cluster.workers]
    env = clean_env(cluster.rpc.log.parent, CORRAL_WORKERS=",".join([*endpoints, dead]))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "corral.cli", "backends", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 20  # an unreachable worker is a line, never a hang
    rows = {b["name"]: b for b in json.loads(out.stdout)["backends"]}
    rpc = rows["rpc"]
    assert rpc["usable"] and rpc["max_models"] == 1
    assert f"{dead} unreachable" in rpc["reason"] and "2 of 3 workers ready" in rpc["reason"]
    for endpoint in endpoints:
        devices = [d for d in rpc["devices"] if endpoint in d["name"]]
        assert len(devices) == 1 and devices[0]["type"] == "rpc" and devices[0]["memory_free"] > 0


def test_split_is_token_identical_to_the_local_cpu(cluster: Cluster) -> None:
    for prompt in PROMPTS:
        got, want = cluster.rpc.generate(prompt), cluster.reference(prompt)
        assert got["context"] == want["context"], (got["response"], want["response"])
        assert got["response"] == want["response"] and got["response"].strip()
    # Each worker holds some of the 18 layers, none twice, all of them between the two.
    first, second = (w.wait_layers(bool) for w in cluster.workers)
    assert first and second and not first & second, (first, second)
    assert first | second == set(range(18))


def test_streaming_follow_up_grammar_and_batching_match_the_cpu(cluster: Cluster) -> None:
    rpc, cpu = cluster.rpc, cluster.cpu
    question = [{"role": "user", "content": "Name three colors."}]
    text, lines = chat(rpc, question)
    assert len([x for x in lines if x["message"]["content"]]) > 3  # streamed token by token
    assert text == chat(cpu, question)[0]
    # The follow-up turn reuses the first turn's KV cache (the prefix) in the runner's batcher.
    follow = [*question, {"role": "assistant", "content": text}, {"role": "user", "content": "And animals?"}]
    assert chat(rpc, follow)[0] == chat(cpu, follow)[0]
    # A JSON schema becomes a grammar that constrains sampling on the split model.
    schema = {"type": "object", "properties": {"color": {"type": "string", "maxLength": 12}},
              "required": ["color"]}
    got = rpc.generate("What color is the sky? Answer in JSON.", format=schema, options={"num_predict": 40})
    assert got["response"] == cpu.generate("What color is the sky? Answer in JSON.", format=schema,
                                           options={"num_predict": 40})["response"]
    assert isinstance(json.loads(got["response"])["color"], str)
    # Two requests at once are decoded in one batch and come out as each does alone.
    alone = {p: cluster.reference(p)["response"] for p in PROMPTS}
    with ThreadPoolExecutor(2) as pool:
        together = dict(zip(PROMPTS, pool.map(lambda p: rpc.generate(p)["response"], PROMPTS), strict=True))
    assert together == alone


def test_embeddings_match_the_cpu(cluster: Cluster) -> None:
    body = {"model": "gemma3:270m", "input": ["hello world", "the sky is blue"],
            "options": cluster.rpc.options()}
    got = cluster.rpc.http.post("/api/embed", json=body)
    want = cluster.cpu.http.post("/api/embed", json=body)
    assert got.status_code == 200 and want.status_code == 200, (got.text, want.text)
    for a, b in zip(got.json()["embeddings"], want.json()["embeddings"], strict=True):
        assert len(a) == len(b) == 640
        assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-3)
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_a_worker_serving_a_client_is_reported_busy(cluster: Cluster) -> None:
    status = probe_worker(cluster.workers[0].endpoint, timeout=0.5)
    assert status.state == "busy", status


def test_worker_killed_mid_stream(cluster: Cluster) -> None:
    rpc, victim = cluster.rpc, cluster.workers[1]
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def poll_version() -> None:  # the server keeps answering, whatever happens to the model
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                ok = rpc.http.get("/api/version", timeout=1.0).status_code == 200
            except Exception as exc:
                failures.append(repr(exc))
                ok = True
            if not ok:
                failures.append("status")
            latencies.append(time.monotonic() - t0)
            stop.wait(0.1)

    poller = threading.Thread(target=poll_version, daemon=True)
    poller.start()
    try:
        body = {"model": "gemma3:270m", "prompt": "Tell me a long story about a dragon.",
                "options": rpc.options(num_predict=1000)}
        lines = []
        with rpc.http.stream("POST", "/api/generate", json=body) as r:
            assert r.status_code == 200
            killed_at = 0.0
            for line in r.iter_lines():
                if not line:
                    continue
                lines.append(json.loads(line))
                if len(lines) == 3:
                    victim.kill9()
                    killed_at = time.monotonic()
        ended = time.monotonic() - killed_at
        assert killed_at and "error" in lines[-1], lines[-3:]
        assert victim.endpoint in lines[-1]["error"], lines[-1]
        assert ended < 15, ended
        # While the worker is down, a request fails fast and names it.
        t0 = time.monotonic()
        r = rpc.http.post("/api/generate", json={"model": "gemma3:270m", "prompt": "hi", "stream": False,
                                                  "options": rpc.options()})
        assert r.status_code == 500 and victim.endpoint in r.json()["error"], r.text
        assert time.monotonic() - t0 < 10
        # Back up: the next request loads the model again and answers as before.
        victim.start().wait_ready()
        assert rpc.generate(PROMPTS[0])["context"] == cluster.reference(PROMPTS[0])["context"]
    finally:
        stop.set()
        poller.join(5)
    assert not failures, failures
    assert max(latencies) < 1.0, max(latencies)
