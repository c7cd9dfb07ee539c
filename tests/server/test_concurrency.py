"""Many clients at once on a live server: parallel streams, disconnects, a full queue, a killed runner."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import Harness, LiveServer

from corral.scheduler import BUSY


async def _stream_lines(client: httpx.AsyncClient, path: str,
                        body: dict[str, Any]) -> list[tuple[float, Any]]:
    out = []
    async with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line:
                out.append((time.monotonic(), json.loads(line)))
    return out


def test_eight_streams_at_once_are_parallel_and_not_interleaved(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(num_parallel=8)
    for i in range(8):
        h.fake.enqueue(None, delay=0.01, match=f"client number {i}")

    async def main(url: str) -> list[list[tuple[float, Any]]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return await asyncio.gather(*(
                _stream_lines(c, "/api/generate", {"model": "tiny", "prompt": f"client number {i}",
                                                   "options": {"temperature": 0}})
                for i in range(8)))

    with LiveServer(h.app) as srv:
        results = asyncio.run(main(srv.url))
    texts = ["".join(o.get("response", "") for _, o in lines) for lines in results]
    for i, text in enumerate(texts):
        assert f"client number {i}" in text, text  # the fake echoes each client's own prompt
        assert results[i][-1][1]["done"] is True and results[i][-1][1]["done_reason"] == "stop"
    assert len(set(texts)) == 8
    first_chunks = [lines[0][0] for lines in results]
    last_chunks = [lines[-1][0] for lines in results]
    assert max(first_chunks) < min(last_chunks)  # every stream had started before any finished


def test_disconnect_mid_stream_frees_the_slot(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(num_parallel=1)
    h.fake.enqueue("x" * 2000, delay=0.02, match="long one")  # 40 s if nobody stops it

    async def main(url: str) -> float:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            async with c.stream("POST", "/api/generate", json={"model": "tiny", "prompt": "long one"}) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += bool(line)
                    if seen == 3:
                        break  # leaving the block closes the connection mid-stream
            t0 = time.monotonic()
            r = await c.post("/api/generate", json={"model": "tiny", "prompt": "short", "stream": False,
                                                    "options": {"num_predict": 3}})
            assert r.status_code == 200 and r.json()["eval_count"] == 3
            return time.monotonic() - t0

    with LiveServer(h.app) as srv:
        waited = asyncio.run(main(srv.url))
    assert waited < 5.0  # the only slot came back long before the 40 s reply would have ended
    gens = [c for c in h.fake.history if c.op == "generate"]
    assert len(gens) == 2


def test_disconnect_in_a_non_streamed_request_frees_the_slot(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(num_parallel=1)
    h.fake.enqueue("w" * 2000, delay=0.02, match="patient")  # 40 s if nobody stops it

    async def main(url: str) -> float:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
                await c.post("/v1/chat/completions", timeout=0.5, json={
                    "model": "tiny", "messages": [{"role": "user", "content": "patient"}]})
            t0 = time.monotonic()
            r = await c.post("/api/generate", json={"model": "tiny", "prompt": "next", "stream": False,
                                                    "options": {"num_predict": 2}})
            assert r.status_code == 200
            return time.monotonic() - t0

    with LiveServer(h.app) as srv:
        assert asyncio.run(main(srv.url)) < 5.0


def test_full_queue_answers_503(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(num_parallel=1, max_queue=1)
    h.fake.enqueue("y" * 400, delay=0.01, match="holder")

    async def main(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            async with c.stream("POST", "/api/generate", json={"model": "tiny", "prompt": "holder"}) as r:
                # Keep the line iterator referenced: dropping it would close the response early.
                holder = r.aiter_lines()
                assert json.loads(await holder.__anext__())["done"] is False  # it owns the only slot now
                # not a short request (num_predict <= 32 would take the model's spare slot at once)
                waiter = asyncio.create_task(c.post("/api/generate", json={
                    "model": "tiny", "prompt": "waiter", "stream": False, "options": {"num_predict": 40}}))
                for _ in range(200):
                    if h.engine.scheduler.pending == 1:
                        break
                    await asyncio.sleep(0.01)
                assert h.engine.scheduler.pending == 1
                busy = await c.post("/api/generate", json={"model": "tiny", "prompt": "third"})
                assert busy.status_code == 503 and busy.json() == {"error": BUSY}
                busy = await c.post("/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": "x"}]})
                assert busy.status_code == 503 and busy.json()["error"]["message"] == BUSY
                await holder.aclose()
            done = await waiter  # the holder disconnected: the waiter gets the slot
            assert done.status_code == 200 and done.json()["done"] is True

    with LiveServer(h.app) as srv:
        asyncio.run(main(srv.url))


@pytest.mark.slow
def test_runner_killed_mid_request(make_harness: Callable[..., Harness], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "fake.json"
    script.write_text(json.dumps([{"match": "doomed", "reply": "z" * 500, "delay": 0.02}]))
    monkeypatch.setenv("CORRAL_FAKE_SCRIPT", str(script))  # the runner subprocess inherits it
    h = make_harness(subprocess=True, load_plugins=(), extra_plugins=("corral.testing.fake",))

    async def main(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            lines = []
            async with c.stream("POST", "/api/chat", json={
                    "model": "tiny", "messages": [{"role": "user", "content": "doomed"}]}) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    lines.append(json.loads(line))
                    if len(lines) == 2:
                        (row,) = h.engine.running()
                        assert row.pid and row.pid != os.getpid()
                        os.kill(row.pid, signal.SIGKILL)
            assert "error" in lines[-1] and "runner" in lines[-1]["error"], lines[-1]
            assert not any(o.get("done") for o in lines)
            r = await c.post("/api/chat", json={"model": "tiny", "stream": False,
                                                "options": {"num_predict": 4},
                                                "messages": [{"role": "user", "content": "again"}]})
            assert r.status_code == 200 and r.json()["eval_count"] == 4

    with LiveServer(h.app) as srv:
        asyncio.run(main(srv.url))


def test_shutdown_drains_in_flight_streams(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    for i in range(3):
        h.fake.enqueue("d" * 40, delay=0.02, match=f"drain {i}")
    srv = LiveServer(h.app).__enter__()

    async def main() -> list[list[Any]]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
            started: set[int] = set()

            async def one(i: int) -> list[Any]:
                out = []
                body = {"model": "tiny", "prompt": f"drain {i}"}
                async with c.stream("POST", "/api/generate", json=body) as r:
                    async for line in r.aiter_lines():
                        if line:
                            out.append(json.loads(line))
                            started.add(i)
                            if len(started) == 3:  # all streams are running: begin shutting down
                                srv.server.should_exit = True  # what uvicorn does on SIGTERM
                return out

            return await asyncio.gather(*(one(i) for i in range(3)))

    try:
        results = asyncio.run(main())
    finally:
        srv.__exit__(None, None, None)
    for out in results:  # all three finished normally although shutdown began mid-stream
        assert "".join(o.get("response", "") for o in out) == "d" * 40 and out[-1]["done"] is True
    assert not srv.thread.is_alive() and h.engine.running() == []  # runners stopped by the lifespan
