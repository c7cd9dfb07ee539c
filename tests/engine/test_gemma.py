"""The real pipeline: Gemma 3 270M on the CPU backend, in a runner subprocess, through the engine."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import pytest

import corral_plugins.cpu
from corral.config import Config
from corral.conversation import Message
from corral.engine import Engine
from corral.jobs import ChatJob, EmbedJob, GenerateJob, TokenizeJob
from corral.store.store import Store

CPU_LIB = Path(corral_plugins.cpu.__file__).parent / "_lib"

pytestmark = [
    pytest.mark.gemma,
    pytest.mark.skipif(not any(CPU_LIB.glob("_llama_cpu*")),
                       reason=f"the CPU backend is not built ({CPU_LIB} missing): run build_backends.py"),
]


def test_gemma_through_a_runner_subprocess(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma-engine")
    store = Store(root / "models")
    store.ensure_default_model()
    config = Config(models=store.root, home=root, backend="cpu", num_parallel=2, context_length=1024)

    async def main():
        engine = Engine(config, store)  # the production default: subprocess runners
        try:
            # Greedy Gemma 3 270M (base) answers this form of the question with " Paris".
            question = "Question: What is the capital of France?\nAnswer:"
            job = GenerateJob(model="gemma3:270m", prompt=question, raw=True,
                              options={"temperature": 0, "num_predict": 8})
            chunks = [c async for c in engine.generate(job)]
            text = "".join(c.content for c in chunks)
            last = chunks[-1]
            assert "Paris" in text, text
            assert last.done_reason in ("stop", "length")
            m = last.metrics
            assert 0 < m.eval_count <= 8 and m.prompt_eval_count >= 5
            assert m.eval_duration > 0 and m.prompt_eval_duration > 0 and m.load_duration > 0
            assert last.context is None  # raw
            [row] = engine.running()
            assert row.backend == "cpu" and row.pid not in (None, os.getpid())
            assert row.context_length == 1024 and row.size > 100_000_000

            # A raw prompt written in the model's turn format: its markers are the control tokens, as
            # a rendered template's are (Ollama's raw mode), not text spelled out piece by piece.
            turn = "<start_of_turn>user\nSay hello.<end_of_turn>\n<start_of_turn>model\n"
            raw_turn = [c async for c in engine.generate(GenerateJob(
                model="gemma3:270m", prompt=turn, raw=True, options={"temperature": 0, "num_predict": 1}))]
            as_tokens = await engine.tokenize(TokenizeJob(model="gemma3:270m", text=turn))
            as_text = await engine.tokenize(TokenizeJob(model="gemma3:270m", text=turn, parse_special=False))
            assert raw_turn[-1].metrics.prompt_eval_count == len(as_tokens) < len(as_text)

            chat = ChatJob(model="gemma3:270m", messages=[Message(role="user", content="Say hello.")],
                           options={"temperature": 0, "num_predict": 6})
            answer = [c async for c in engine.chat(chat)]
            assert answer[-1].done and "".join(c.content for c in answer).strip()
            assert "<end_of_turn>" not in "".join(c.content for c in answer)

            emb = await engine.embed(EmbedJob(model="gemma3:270m", inputs=["hello world"]))
            [vec] = emb.embeddings
            assert len(vec) == 640 and math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, rel_tol=1e-4)
            pid = row.pid
        finally:
            await engine.shutdown()
        assert not os.path.exists(f"/proc/{pid}")

    asyncio.run(main())


def test_gemma_embeds_at_a_large_default_context(tmp_path_factory):
    """A 24 GiB machine's default context (32k): the embedding context stays at SIDE_CONTEXT tokens,
    and a longer input is cut to it (``truncate``) or refused with the 400 Ollama gives."""
    from corral.errors import ContextLengthError
    from corral_plugins._llama.embed import SIDE_CONTEXT

    root = tmp_path_factory.mktemp("gemma-embed")
    store = Store(root / "models")
    store.ensure_default_model()
    config = Config(models=store.root, home=root, backend="cpu", num_parallel=1, context_length=32768)
    long_text = "word " * (SIDE_CONTEXT + 200)

    async def main():
        engine = Engine(config, store)
        try:
            emb = await engine.embed(EmbedJob(model="gemma3:270m", inputs=["hello world", long_text]))
            assert len(emb.embeddings) == 2
            assert emb.prompt_eval_count <= SIDE_CONTEXT + 8
            with pytest.raises(ContextLengthError):
                await engine.embed(EmbedJob(model="gemma3:270m", inputs=[long_text], truncate=False))
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_gemma_load_reports_progress_through_the_runner(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma-progress")
    store = Store(root / "models")
    store.ensure_default_model()
    config = Config(models=store.root, home=root, backend="cpu", context_length=512)

    async def main():
        engine = Engine(config, store)
        try:
            chunks = [c async for c in engine.chat(ChatJob(model="gemma3:270m", load_progress=True))]
            *loading, done = chunks
            assert done.done_reason == "load" and done.loading is None
            # llama.cpp's progress callback, one chunk per whole percent of the weights it has read
            done_bytes = [c.loading.completed for c in loading]
            assert len(loading) >= 10 and done_bytes == sorted(set(done_bytes)), done_bytes
            total = os.path.getsize(store.resolve("gemma3:270m").files.model)
            assert all(c.loading.total == total for c in loading) and 0 < done_bytes[-1] < total
            again = [c async for c in engine.chat(ChatJob(model="gemma3:270m", load_progress=True))]
            assert [c.done_reason for c in again] == ["load"]  # loaded already: nothing to report
        finally:
            await engine.shutdown()

    asyncio.run(main())
