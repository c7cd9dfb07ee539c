"""Memory-aware loading through the engine on the fake backend (its memory model: the file's tensor data,
1 KiB of KV cache per context cell, 1 MiB of compute), in-process runners: evicting idle models to make
room, waiting for busy ones, refusing what cannot fit even alone, and the default context by memory."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from corral.config import Config
from corral.engine import Engine
from corral.errors import InsufficientMemoryError
from corral.jobs import GenerateJob
from corral.memory import GiB, Held, default_context, plan
from corral.runner import local_runners
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.fake import FAKE_COMPUTE_BYTES, FAKE_KV_BYTES_PER_CELL
from corral.testing.tinymodel import write_tiny_gguf
from corral.types import HOST, DeviceInfo, DeviceMemory, LoadOptions, MemoryEstimate

MiB = 1 << 20


def engine_for(config: Config, store: Store) -> Engine:
    return Engine(config, store, runner_factory=local_runners(config))


async def run(engine: Engine, model: str, **options: Any) -> None:
    async for _chunk in engine.generate(GenerateJob(model=model, prompt="hi", options=options)):
        pass


def need(store: Store, model: str, num_ctx: int, num_parallel: int) -> int:
    """What the fake backend says ``model`` takes with these options."""
    spec = store.resolve(model)
    from corral.gguf import read_gguf_info

    info = read_gguf_info(spec.files.model)
    weights = info.file_size - info.tensor_data_offset
    return weights + num_ctx * num_parallel * FAKE_KV_BYTES_PER_CELL + FAKE_COMPUTE_BYTES


def test_an_idle_model_is_unloaded_when_the_next_one_needs_its_memory(make_config, engine_store):
    async def main():
        one = need(engine_store, "alpha", 512, 2)
        config = make_config(context_length=512, num_parallel=2, memory_limit=one + one // 2)
        engine = engine_for(config, engine_store)
        await run(engine, "alpha")
        [row] = engine.running()
        assert row.size == one  # /api/ps reports what the backend measured, KV cache and compute included
        await run(engine, "beta")  # alpha is idle and in the way: it goes
        assert [r.name for r in engine.running()] == ["beta:latest"]
        # without the limit both fit side by side (the count cap is 3)
        engine2 = engine_for(make_config(context_length=512, num_parallel=2), engine_store)
        await run(engine2, "alpha")
        await run(engine2, "beta")
        assert sorted(r.name for r in engine2.running()) == ["alpha:latest", "beta:latest"]
        await engine.shutdown()
        await engine2.shutdown()

    asyncio.run(main())


def test_a_model_larger_than_the_limit_is_refused_with_one_line(make_config, engine_store):
    async def main():
        limit = need(engine_store, "alpha", 512, 2) * 2
        engine = engine_for(make_config(context_length=512, num_parallel=2, memory_limit=limit), engine_store)
        await run(engine, "beta")
        with pytest.raises(InsufficientMemoryError) as err:
            await run(engine, "alpha", num_ctx=2048)  # 4 MiB of KV cache alone
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith("cannot load alpha:latest: model requires more system memory (")
        assert ") than is available (" in message
        assert "KV cache for num_ctx 2048 x 2 sequences" in message and "CORRAL_MEMORY_LIMIT" in message
        # refused before anything was unloaded: the loaded model stays
        assert [r.name for r in engine.running()] == ["beta:latest"]
        await engine.shutdown()

    asyncio.run(main())


def test_a_busy_model_in_the_way_is_waited_for_then_unloaded(make_config, engine_store):
    async def main():
        one = need(engine_store, "alpha", 512, 2)
        engine = engine_for(make_config(context_length=512, num_parallel=2, memory_limit=one + one // 2),
                            engine_store)
        spec = engine_store.resolve("alpha")
        lease = await engine.scheduler.acquire(spec, engine._options(spec, {})[0])  # a request in flight
        beta = asyncio.create_task(run(engine, "beta"))
        await asyncio.sleep(0.3)
        assert not beta.done()  # alpha is in use: beta waits rather than overcommitting memory
        assert [r.name for r in engine.running()] == ["alpha:latest"]
        lease.release()
        await asyncio.wait_for(beta, 10)
        assert [r.name for r in engine.running()] == ["beta:latest"]
        await engine.shutdown()

    asyncio.run(main())


@pytest.fixture
def long_store(tmp_path: Path) -> Store:
    """A store with one tiny model trained for 65536 tokens, so the memory tiers are not capped by it."""
    path = write_tiny_gguf(tmp_path / "long.gguf", n_ctx_train=65536).path
    store = Store(tmp_path / "models")
    data = Path(path).read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def chunks() -> Any:
        yield data

    asyncio.run(store.put_blob(digest, chunks()))
    for _ in store.create("long", CreateSpec(files={"long.gguf": digest})):
        pass
    return store


def test_the_default_context_follows_memory_and_the_setting_overrides_it(make_config, long_store):
    async def main():
        # 24 GiB of RAM and no GPU: Ollama's 32768 tier; a limit that cannot hold that KV steps it down
        engine = engine_for(make_config(models=long_store.root, num_parallel=1), long_store)
        await run(engine, "long")
        want = default_context([], engine.config)
        assert engine.running()[0].context_length == min(want, 65536)
        await engine.shutdown()

        limit = 12 * MiB  # 32768 cells of 1 KiB do not fit, 8192 do
        config = make_config(models=long_store.root, num_parallel=1, memory_limit=limit)
        engine = engine_for(config, long_store)
        await run(engine, "long")
        assert engine.running()[0].context_length in (4096, 8192)
        # a request without num_ctx finds that copy: the chosen context is not a reload trigger
        runner = engine.scheduler._models[long_store.resolve("long").digest].runner
        await run(engine, "long")
        assert engine.scheduler._models[long_store.resolve("long").digest].runner is runner
        await engine.shutdown()

        engine = engine_for(make_config(models=long_store.root, num_parallel=1, context_length=1000),
                            long_store)
        await run(engine, "long")
        assert engine.running()[0].context_length == 1000  # CORRAL_CONTEXT_LENGTH still decides
        await engine.shutdown()

    asyncio.run(main())


def test_context_tiers_are_ollamas():
    config = Config()
    gpu = lambda gib: DeviceInfo(name="CUDA0", type="gpu", memory_total=gib * GiB)  # noqa: E731
    assert default_context([gpu(8)], config) == 4096
    assert default_context([gpu(24)], config) == 32768
    assert default_context([gpu(24), gpu(24)], config) == 262144
    assert default_context([gpu(48)], Config(gpu_overhead=2 * GiB)) == 32768  # the overhead comes off


def test_a_short_gpu_is_not_final_when_layers_may_stay_on_the_host():
    host = DeviceMemory(device=HOST, weights=100, free=10 * GiB, total=16 * GiB)
    gpu = DeviceMemory(device="CUDA0", type="gpu", weights=6 * GiB, kv_cache=GiB, free=4 * GiB, total=4 * GiB)
    estimate = MemoryEstimate(devices=(host, gpu), n_layer=32)
    config = Config(memory_limit=0)
    fit = plan(estimate, [], LoadOptions(num_gpu=-1), config)
    assert not fit.never  # 3 GiB of layers move to the host
    refused = plan(estimate, [], LoadOptions(num_gpu=99), config).never  # the user's num_gpu is kept
    assert refused.startswith("model requires more memory on CUDA0 (7.0 GiB: 6.0 GiB weights")
    # another model of ours on the GPU: it is short there now, and the planner names the device
    fit = plan(MemoryEstimate(devices=(host, DeviceMemory(device="CUDA0", type="gpu", weights=GiB,
                                                           free=2 * GiB, total=4 * GiB))),
               [Held("other", {"CUDA0": 2 * GiB}, True, 0.0)], LoadOptions(), config)
    assert fit.short == {} and fit.limits["CUDA0"] == 2 * GiB  # free now: 2 GiB, enough
    fit = plan(MemoryEstimate(devices=(host, DeviceMemory(device="CUDA0", type="gpu", weights=3 * GiB,
                                                           free=2 * GiB, total=4 * GiB))),
               [Held("other", {"CUDA0": 2 * GiB}, True, 0.0)], LoadOptions(num_gpu=99), config)
    assert fit.short == {"CUDA0": GiB}
