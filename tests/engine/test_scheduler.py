"""Scheduler behaviour through the engine on the fake backend, in-process runners (fast)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest

from corral.engine import Engine
from corral.errors import ServerBusyError
from corral.jobs import GenerateJob
from corral.runner import local_runners
from corral.scheduler import BUSY

from .conftest import runner_of


def engine_for(config, store) -> Engine:
    return Engine(config, store, runner_factory=local_runners(config))


async def collect(engine: Engine, job: GenerateJob) -> list:
    return [c async for c in engine.generate(job)]


def test_loads_on_demand_and_reuses_the_runner(make_config, engine_store):
    async def main():
        engine = engine_for(make_config(), engine_store)
        assert engine.running() == []
        first = await collect(engine, GenerateJob(model="alpha", prompt="hello"))
        assert first[-1].done and first[-1].done_reason in ("stop", "length")
        [row] = engine.running()
        assert row.name == "alpha:latest" and row.context_length > 0 and row.size > 0
        runner = runner_of(engine, "alpha:latest")
        second = await collect(engine, GenerateJob(model="alpha", prompt="hello again"))
        assert second[-1].done
        assert runner_of(engine, "alpha:latest") is runner  # no reload
        # A fresh load costs more than attaching to a loaded model.
        assert second[-1].metrics.load_duration < first[-1].metrics.load_duration
        await engine.shutdown()

    asyncio.run(main())


def test_keep_alive_expiry_zero_and_forever(make_config, engine_store):
    async def main():
        engine = engine_for(make_config(), engine_store)
        await collect(engine, GenerateJob(model="alpha", prompt="hi", keep_alive=0.3))
        [row] = engine.running()
        left = row.expires_at - datetime.now(timezone.utc)
        assert timedelta(0) < left <= timedelta(seconds=0.3)
        await asyncio.sleep(0.6)
        assert engine.running() == []  # expired and unloaded

        await collect(engine, GenerateJob(model="beta", prompt="hi", keep_alive=0))
        await asyncio.sleep(0.05)  # the unload runs as a task right after the release
        assert engine.running() == []

        await collect(engine, GenerateJob(model="gamma", prompt="hi", keep_alive=float("inf")))
        [row] = engine.running()
        assert row.expires_at - datetime.now(timezone.utc) > timedelta(days=365 * 100)
        await engine.shutdown()

    asyncio.run(main())


def test_lru_eviction_at_max_loaded_models(make_config, engine_store):
    async def main():
        engine = engine_for(make_config(max_loaded_models=2), engine_store)
        await collect(engine, GenerateJob(model="alpha", prompt="a"))
        await collect(engine, GenerateJob(model="beta", prompt="b"))
        await collect(engine, GenerateJob(model="alpha", prompt="a again"))  # beta is now the LRU one
        await collect(engine, GenerateJob(model="gamma", prompt="c"))
        assert sorted(r.name for r in engine.running()) == ["alpha:latest", "gamma:latest"]
        await engine.shutdown()

    asyncio.run(main())


def test_names_of_one_model_share_its_loaded_copy(make_config, engine_store):
    # A loaded model is its spec's digest (plus load options): a copy under another name is the same
    # model, so it attaches to the loaded copy (as Ollama does) and unloading either name unloads it.
    engine_store.copy("alpha", "alpha-twin")
    try:
        async def main():
            engine = engine_for(make_config(), engine_store)
            await collect(engine, GenerateJob(model="alpha", prompt="a"))
            runner = runner_of(engine, "alpha:latest")
            await collect(engine, GenerateJob(model="alpha-twin", prompt="b"))
            [row] = engine.running()
            assert row.name == "alpha:latest" and runner_of(engine, "alpha:latest") is runner
            assert row.digest == engine_store.resolve("alpha-twin").digest
            assert await engine.unload("alpha-twin") is True and engine.running() == []
            await engine.shutdown()

        asyncio.run(main())
    finally:
        engine_store.delete("alpha-twin")


def test_reload_when_num_ctx_changes(make_config, engine_store):
    async def main():
        engine = engine_for(make_config(context_length=512), engine_store)
        await collect(engine, GenerateJob(model="alpha", prompt="a"))
        first = runner_of(engine, "alpha:latest")
        assert engine.running()[0].context_length == 512
        await collect(engine, GenerateJob(model="alpha", prompt="a", options={"num_ctx": 256}))
        assert engine.running()[0].context_length == 256
        assert runner_of(engine, "alpha:latest") is not first
        assert not first.alive
        second = runner_of(engine, "alpha:latest")
        same_ctx = {"num_ctx": 256, "temperature": 0.5}
        await collect(engine, GenerateJob(model="alpha", prompt="a", options=same_ctx))
        assert runner_of(engine, "alpha:latest") is second  # sampling options never reload
        await engine.shutdown()

    asyncio.run(main())


def test_full_queue_answers_busy(make_config, engine_store):
    rules = [{"match": "slow", "reply": "one two three four", "delay": 0.03}]

    async def main():
        engine = engine_for(make_config(rules, num_parallel=1, max_queue=1), engine_store)
        holder = asyncio.create_task(collect(engine, GenerateJob(model="alpha", prompt="slow")))
        await asyncio.sleep(0.15)  # loaded and streaming: the only slot is taken
        waiter = asyncio.create_task(collect(engine, GenerateJob(model="alpha", prompt="slow")))
        await asyncio.sleep(0.05)
        assert engine.scheduler.pending == 1
        with pytest.raises(ServerBusyError) as err:
            await collect(engine, GenerateJob(model="alpha", prompt="third"))
        assert str(err.value) == BUSY
        # The queued request is served once the slot frees.
        assert (await holder)[-1].done and (await waiter)[-1].done
        await engine.shutdown()

    asyncio.run(main())


def test_cancel_mid_stream_frees_the_slot(make_config, engine_store):
    rules = [{"match": "slow", "reply": "x" * 200, "delay": 0.05}]  # 10 s if run to the end

    async def main():
        engine = engine_for(make_config(rules, num_parallel=1), engine_store)
        stream = engine.generate(GenerateJob(model="alpha", prompt="slow"))
        first = await stream.__anext__()
        assert first.content
        await stream.aclose()  # what a client disconnect does to the server's iterator
        t0 = time.monotonic()
        chunks = await collect(engine, GenerateJob(model="alpha", prompt="quick"))
        assert chunks[-1].done and time.monotonic() - t0 < 2.0
        await engine.shutdown()

    asyncio.run(main())


def test_shutdown_drains_in_flight_requests(make_config, engine_store):
    rules = [{"match": "slow", "reply": "abcdefgh", "delay": 0.05}]

    async def main():
        engine = engine_for(make_config(rules), engine_store)
        task = asyncio.create_task(collect(engine, GenerateJob(model="alpha", prompt="slow")))
        await asyncio.sleep(0.1)
        runner = runner_of(engine, "alpha:latest")
        await engine.shutdown(drain_timeout=10)
        chunks = await task
        assert "".join(c.content for c in chunks) == "abcdefgh" and chunks[-1].done_reason == "stop"
        assert not runner.alive and engine.running() == []
        with pytest.raises(ServerBusyError, match="shutting down"):
            await collect(engine, GenerateJob(model="alpha", prompt="late"))

    asyncio.run(main())


def test_a_short_request_takes_the_spare_slot_while_long_ones_wait(make_config, engine_store):
    """num_parallel=1 and its slot streaming a long answer: a short request (num_predict <=
    SHORT_REPLY_TOKENS) is served at once on the model's spare slot; a long one waits for the slot."""
    rules = [{"match": "slow", "reply": "x" * 200, "delay": 0.05}]  # 10 s if run to the end

    async def main():
        engine = engine_for(make_config(rules, num_parallel=1), engine_store)
        stream = engine.generate(GenerateJob(model="alpha", prompt="slow"))
        await stream.__anext__()  # loaded and streaming: the only regular slot is taken
        waiting = asyncio.create_task(collect(engine, GenerateJob(model="alpha", prompt="quick")))
        while engine.scheduler.pending < 1:  # the long request waits for the slot
            await asyncio.sleep(0.01)
        short = await asyncio.wait_for(
            collect(engine, GenerateJob(model="alpha", prompt="quick", options={"num_predict": 8})), 5)
        assert short[-1].done
        assert not waiting.done() and engine.scheduler.pending == 1
        await stream.aclose()  # the slot frees: the long request runs
        assert (await asyncio.wait_for(waiting, 5))[-1].done
        await engine.shutdown()

    asyncio.run(main())


def test_slot_pool_order_spare_and_cancellation():
    """Waiters are served in arrival order; a short one passes a long one only to take the spare; a
    wait cancelled after its slot was handed over gives the slot back."""
    from corral.slotpool import SlotPool

    async def main():
        pool = SlotPool(1)
        assert await pool.acquire() is False  # the regular slot
        assert await pool.acquire(short=True) is True  # the spare
        first = asyncio.create_task(pool.acquire())
        short = asyncio.create_task(pool.acquire(short=True))
        await asyncio.sleep(0)
        pool.release(True)  # the spare frees: the short waiter takes it, the long one cannot
        assert await short is True and not first.done()
        pool.release(False)
        assert await first is False
        # a waiter cancelled once the slot is already its own hands it back
        late = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0)
        pool.release(False)
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert pool.free == 1
        assert await pool.acquire() is False
        gone = asyncio.create_task(pool.acquire(short=True))  # every slot busy: it waits
        await asyncio.sleep(0)
        assert not gone.done()
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        pool.release(True)
        assert (pool.free, pool.spare) == (0, 1)

    asyncio.run(main())
