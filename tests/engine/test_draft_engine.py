"""A model created with a draft model, through the engine on the CPU backend: the draft is loaded beside
the model and drafts (metrics count it), greedy answers equal the model's without a draft, and
draft_num_predict sets the draft length (0 turns speculation off)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from corral.config import Config
from corral.engine import Engine
from corral.jobs import GenerateJob
from corral.runner import local_runners
from corral.store.records import CreateSpec
from corral.store.store import Store
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec  # noqa: F401  (session fixtures)
from corral.testing.tinymodel import write_tiny_gguf

CPU_LIB = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"


def _put(store: Store, path: Path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def body():  # type: ignore[no-untyped-def]
        yield data

    asyncio.run(store.put_blob(digest, body()))
    return digest


def test_generate_with_a_draft_model(tmp_path: Path, tiny_gguf: Path) -> None:  # noqa: F811
    if not list(CPU_LIB.glob("libllama.so*")):
        pytest.skip("the CPU backend is not built")
    store = Store(tmp_path / "models")
    write_tiny_gguf(tmp_path / "draft.gguf", n_layer=1, n_embd=32, n_ff=64, seed=9)
    model, draft = _put(store, tiny_gguf), _put(store, tmp_path / "draft.gguf")
    params = {"temperature": 0}
    for name, spec in (("plain", CreateSpec(files={"m.gguf": model}, parameters=params)),
                       ("self", CreateSpec(files={"m.gguf": model}, draft_files={"m.gguf": model},
                                           parameters=params)),
                       ("small", CreateSpec(files={"m.gguf": model}, draft_files={"d.gguf": draft},
                                            parameters={**params, "draft_num_predict": 2}))):
        list(store.create(name, spec))
    config = Config(models=store.root, home=tmp_path, load_plugins=("cpu",), num_parallel=1,
                    context_length=512)

    async def main() -> None:
        engine = Engine(config, store, runner_factory=local_runners(config))
        try:
            async def answer(model: str, **options: int) -> tuple[str, int, int]:
                job = GenerateJob(model=model, prompt="tell me a story about the sun", raw=True,
                                  options={"num_predict": 40, **options})
                chunks = [c async for c in engine.generate(job)]
                m = chunks[-1].metrics
                assert m is not None
                return "".join(c.content for c in chunks), m.draft_count, m.draft_accepted

            ref, _, _ = await answer("plain", draft_num_predict=0)
            text, drafted, accepted = await answer("self")
            assert text == ref and drafted > 10 and accepted >= 0.9 * drafted
            text, drafted, _ = await answer("small")
            assert text == ref and drafted > 10
            text, drafted, _ = await answer("self", draft_num_predict=0)
            assert text == ref and drafted == 0
            ps = {m.name: m.size for m in engine.scheduler.running()}
            # /api/ps counts the draft's weights with the model's; with draft_num_predict 0 none is loaded
            assert ps["small:latest"] > ps["plain:latest"] == ps["self:latest"]
        finally:
            await engine.shutdown()

    asyncio.run(main())
