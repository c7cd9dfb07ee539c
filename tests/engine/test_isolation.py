"""Runner subprocesses: a crash or kill -9 fails only its requests, is reaped, and the next load works."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from corral.engine import Engine
from corral.errors import BackendError, ModelLoadError, RunnerStoppedError
from corral.jobs import GenerateJob
from corral.runner import RUNNER_STOPPED, ProcessRunner, subprocess_runners
from corral.types import GenerationRequest, LoadOptions


def engine_for(config, store) -> Engine:
    return Engine(config, store, runner_factory=subprocess_runners(config))


def text(chunks) -> str:
    return "".join(c.content for c in chunks)


def assert_reaped(pid: int) -> None:
    """The runner is neither running nor a zombie: no process with that pid is our child any more."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not os.path.exists(f"/proc/{pid}") or "zombie" not in open(f"/proc/{pid}/status").read().lower()


def test_kill_9_mid_request(make_config, engine_store):
    rules = [{"match": "slow", "reply": "y" * 100, "delay": 0.05}]

    async def main():
        engine = engine_for(make_config(rules), engine_store)
        other = [c async for c in engine.generate(GenerateJob(model="beta", prompt="hello"))]
        other_pid = engine.running()[0].pid
        stream = engine.generate(GenerateJob(model="alpha", prompt="slow"))
        first = await stream.__anext__()
        assert first.content == "y"
        victim = next(r.pid for r in engine.running() if r.name == "alpha:latest")
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(RunnerStoppedError) as err:
            async for _ in stream:
                pass
        assert str(err.value) == RUNNER_STOPPED
        await asyncio.sleep(0.1)
        assert_reaped(victim)
        # The next request reloads alpha in a new runner and succeeds.
        again = [c async for c in engine.generate(GenerateJob(model="alpha", prompt="hello"))]
        assert again[-1].done and text(again)
        rows = {r.name: r.pid for r in engine.running()}
        assert rows["alpha:latest"] not in (None, victim)
        # The other model never noticed: same runner, still answering.
        assert rows["beta:latest"] == other_pid
        again_other = [c async for c in engine.generate(GenerateJob(model="beta", prompt="hello"))]
        assert text(again_other) == text(other)
        pids = list(rows.values())
        await engine.shutdown()
        for pid in pids:
            assert_reaped(pid)

    asyncio.run(main())


def test_crash_inside_backend_and_backend_error(make_config, engine_store):
    rules = [{"match": "die", "crash": True, "error_after": 3},
             {"match": "fail", "error": "scripted failure"}]

    async def main():
        engine = engine_for(make_config(rules), engine_store)
        with pytest.raises(BackendError, match="scripted failure"):
            [c async for c in engine.generate(GenerateJob(model="alpha", prompt="fail"))]
        pid = engine.running()[0].pid  # a backend error leaves the runner serving
        with pytest.raises(RunnerStoppedError):
            [c async for c in engine.generate(GenerateJob(model="alpha", prompt="die now"))]
        await asyncio.sleep(0.1)
        assert_reaped(pid)
        assert engine.running() == []
        ok = [c async for c in engine.generate(GenerateJob(model="alpha", prompt="fine"))]
        assert ok[-1].done_reason == "stop"
        await engine.shutdown()

    asyncio.run(main())


def test_backend_explains_an_unexpected_stop(make_config, engine_store):
    """The backend's sentence (the rpc backend names a lost worker) replaces the generic message."""
    asked = []

    def explain(handle):
        asked.append(handle.path)
        return "lost RPC worker 10.0.0.9:50052 (unreachable: connection refused)"

    async def main():
        config = make_config([{"match": "die", "crash": True, "error_after": 2}])
        engine = Engine(config, engine_store, runner_factory=subprocess_runners(config, explain=explain))
        with pytest.raises(RunnerStoppedError) as err:
            [c async for c in engine.generate(GenerateJob(model="alpha", prompt="die now"))]
        assert str(err.value) == ("model runner has unexpectedly stopped: lost RPC worker 10.0.0.9:50052 "
                                  "(unreachable: connection refused)")
        ok = [c async for c in engine.generate(GenerateJob(model="alpha", prompt="fine"))]
        assert ok[-1].done_reason == "stop"
        await engine.shutdown()  # a runner closed on purpose is not explained
        assert asked == [str(engine_store.get("alpha").model_path)]

    asyncio.run(main())


def test_runner_client_calls_and_cancel(make_config, engine_store):
    rules = [{"match": "slow", "reply": "z" * 100, "delay": 0.05}]

    async def main():
        runner = ProcessRunner(make_config(rules))
        await runner.start()
        assert runner.backend == "fake" and runner.pid
        handle = await runner.load(engine_store.resolve("alpha"), LoadOptions(num_ctx=128))
        assert handle.info.n_ctx == 128
        tokens = await runner.tokenize("héllo 世界")
        assert await runner.detokenize(tokens) == "héllo 世界"
        pieces = await runner.token_pieces(tokens)  # bytes over the channel, one per token
        assert len(pieces) == len(tokens) and b"".join(pieces) == "<s>héllo 世界".encode()
        # Many requests at once over one channel.
        prompts = [await runner.tokenize(f"prompt {i}") for i in range(8)]
        results = await asyncio.gather(*(_gen(runner, p) for p in prompts))
        assert len(set(results)) == 8
        # Closing the stream early cancels in the runner; it keeps serving.
        threads = await settled_threads(runner.pid)
        stream = runner.generate(GenerationRequest(prompt=await runner.tokenize("slow")))
        await stream.__anext__()
        assert await settled_threads(runner.pid) == threads + 1  # one thread per generation
        await stream.aclose()
        for _ in range(50):  # the reply had ~5 s left; the cancel stops it within a token
            if len(os.listdir(f"/proc/{runner.pid}/task")) == threads:
                break
            await asyncio.sleep(0.02)
        assert len(os.listdir(f"/proc/{runner.pid}/task")) == threads
        emb = await runner.embed([await runner.tokenize("a b")])
        assert len(emb.embeddings) == 1 and emb.prompt_tokens > 0
        pid = runner.pid
        await runner.close()
        assert not runner.alive and runner.returncode == 0
        assert_reaped(pid)

    asyncio.run(main())


async def settled_threads(pid: int) -> int:
    """The runner's thread count once short-lived request threads (tokenize, ...) have exited."""
    counts = []
    for _ in range(10):
        counts.append(len(os.listdir(f"/proc/{pid}/task")))
        await asyncio.sleep(0.02)
    return min(counts)


async def _gen(runner: ProcessRunner, prompt: list[int]) -> str:
    return "".join([e.text async for e in runner.generate(GenerationRequest(prompt=prompt))])


def test_runner_start_failure_is_a_clear_error(make_config):
    async def main():
        runner = ProcessRunner(make_config(backend="nonexistent"))
        with pytest.raises(Exception) as err:
            await runner.start()
        assert "nonexistent" in str(err.value)
        assert runner.returncode is not None  # exited and reaped

    asyncio.run(main())


def test_a_load_without_progress_for_the_load_timeout_fails_and_stops_its_runner(make_config, engine_store):
    async def main():
        # the fake's script holds every load at 0 % for 30 s; CORRAL_LOAD_TIMEOUT is 1 s
        config = make_config(rules=[{"stall_load": 30.0}], load_timeout=1.0)
        engine = engine_for(config, engine_store)
        t0 = time.monotonic()
        with pytest.raises(ModelLoadError, match=r"no progress for 1 s \(CORRAL_LOAD_TIMEOUT\)"):
            async for _ in engine.generate(GenerateJob(model="alpha", prompt="hi")):
                pass
        assert time.monotonic() - t0 < 15  # not the 30 s the load would have taken
        assert engine.running() == []
        await engine.shutdown()

    asyncio.run(main())
