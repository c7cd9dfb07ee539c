"""The engine pipeline on the fake backend (in-process runners): chunks, metrics, context, embed, errors."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from corral.conversation import Message, Tool
from corral.engine import PROMPT_TOO_LONG, Engine
from corral.errors import (
    BackendError,
    CapabilityError,
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
)
from corral.gguf import read_gguf_info
from corral.jobs import ChatJob, EmbedJob, GenerateJob
from corral.runner import local_runners

from .conftest import runner_of


def run(make_config, engine_store, body, rules=None, **config):
    """Run ``body(engine)`` on a fresh engine, then shut it down."""
    cfg = make_config(rules, **config)

    async def main():
        engine = Engine(cfg, engine_store, runner_factory=local_runners(cfg))
        try:
            return await body(engine)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


async def chunks_of(stream) -> list:
    return [c async for c in stream]


def content(chunks) -> str:
    return "".join(c.content for c in chunks)


def test_generate_streams_content_metrics_and_context(make_config, engine_store):
    async def body(engine):
        chunks = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="Why is the sky blue?")))
        *parts, last = chunks
        assert parts and all(not c.done for c in parts) and last.done and last.done_reason == "stop"
        assert "Why is the sky blue?" in content(parts)  # the fake echoes the prompt's last words
        m = last.metrics
        assert m.total_duration >= m.load_duration > 0
        assert m.prompt_eval_count > 0 and m.eval_count > 0 and m.eval_duration > 0
        # context = prompt tokens + generated tokens, so a follow-up can continue from it
        assert len(last.context) == m.prompt_eval_count + m.eval_count
        runner = runner_of(engine, "alpha:latest")
        assert await runner.detokenize(last.context[m.prompt_eval_count:]) == content(parts)

        follow = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="And at night?",
                                                             context=last.context)))
        fm = follow[-1].metrics
        assert follow[-1].context[: len(last.context)] == last.context
        assert fm.prompt_eval_count > len(last.context)

    run(make_config, engine_store, body)


def test_generate_raw_has_no_context_and_sends_the_prompt_as_is(make_config, engine_store):
    async def body(engine):
        chunks = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="abc", raw=True)))
        assert chunks[-1].context is None
        assert chunks[-1].metrics.prompt_eval_count == 4  # BOS + three byte tokens: no template
        with pytest.raises(InvalidRequestError, match="raw mode does not support"):
            await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="abc", raw=True, system="x")))

    run(make_config, engine_store, body)


def test_num_predict_stop_strings_and_logprobs(make_config, engine_store):
    rules = [{"match": "count", "reply": "one two three four five"}]

    async def body(engine):
        short = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="count", raw=True,
                                                            options={"num_predict": 3})))
        assert content(short) == "one" and short[-1].done_reason == "length"
        assert short[-1].metrics.eval_count == 3
        stopped = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="count", raw=True,
                                                              options={"stop": ["three"]})))
        assert content(stopped) == "one two " and stopped[-1].done_reason == "stop"
        lp = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="count", raw=True,
                                                         logprobs=True, top_logprobs=2,
                                                         options={"num_predict": 4})))
        entries = [e for c in lp for e in c.logprobs]
        assert len(entries) == 4
        assert "".join(e.token for e in entries) == "one "
        assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 and e.bytes for e in entries)
        with pytest.raises(InvalidRequestError, match="top_logprobs"):
            await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="x", top_logprobs=21)))

    run(make_config, engine_store, body, rules)


def test_empty_prompt_loads_and_keep_alive_zero_unloads(make_config, engine_store):
    async def body(engine):
        [load] = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="")))
        assert load.done and load.done_reason == "load" and load.metrics.load_duration > 0
        assert [r.name for r in engine.running()] == ["alpha:latest"]
        [unload] = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="", keep_alive=0)))
        assert unload.done_reason == "unload" and engine.running() == []
        [chat_load] = await chunks_of(engine.chat(ChatJob(model="beta", messages=[])))
        assert chat_load.done_reason == "load" and [r.name for r in engine.running()] == ["beta:latest"]
        [chat_unload] = await chunks_of(engine.chat(ChatJob(model="beta", messages=[], keep_alive=0)))
        assert chat_unload.done_reason == "unload" and engine.running() == []

    run(make_config, engine_store, body)


def test_chat_streams_an_answer(make_config, engine_store):
    rules = [{"match": "capital", "reply": "Paris is the capital."}]

    async def body(engine):
        question = Message(role="user", content="What is the capital of France?")
        job = ChatJob(model="alpha", messages=[question])
        chunks = await chunks_of(engine.chat(job))
        assert content(chunks) == "Paris is the capital."
        assert chunks[-1].done_reason == "stop" and chunks[-1].context is None
        assert chunks[-1].metrics.eval_count == len("Paris is the capital.")

    run(make_config, engine_store, body, rules)


def test_errors_before_and_after_the_first_chunk(make_config, engine_store):
    rules = [{"match": "late", "reply": "abcdef", "error": "went wrong", "error_after": 3},
             {"match": "early", "error": "refused"}]

    async def body(engine):
        with pytest.raises(ModelNotFoundError):
            await chunks_of(engine.generate(GenerateJob(model="no-such-model", prompt="hi")))
        with pytest.raises(BackendError, match="refused"):
            await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="early")))
        seen = []
        with pytest.raises(BackendError, match="went wrong"):
            async for c in engine.generate(GenerateJob(model="alpha", prompt="late")):
                seen.append(c)
        assert content(seen) == "abc"
        # the slot came back: the model still answers
        ok = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="fine")))
        assert ok[-1].done

    run(make_config, engine_store, body, rules, num_parallel=1)


def test_prompt_longer_than_context(make_config, engine_store):
    async def body(engine):
        long = "word " * 100
        with pytest.raises(ContextLengthError) as err:
            await chunks_of(engine.generate(GenerateJob(model="alpha", prompt=long, raw=True, truncate=False,
                                                        options={"num_ctx": 64})))
        # Ollama's wording first, then the numbers and the setting that would make it fit
        assert str(err.value).startswith(PROMPT_TOO_LONG) and "num_ctx is 64" in str(err.value)
        ok = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt=long, raw=True,
                                                         options={"num_ctx": 64, "num_predict": 2})))
        assert ok[-1].done

    run(make_config, engine_store, body)


def test_embed(make_config, engine_store):
    async def body(engine):
        out = await engine.embed(EmbedJob(model="alpha", inputs=["hello", "hello there", "bye"]))
        assert len(out.embeddings) == 3 and out.prompt_eval_count > 0 and out.total_duration > 0
        for v in out.embeddings:
            assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-6)
        cut = await engine.embed(EmbedJob(model="alpha", inputs=["hello"], dimensions=8))
        assert len(cut.embeddings[0]) == 8
        assert math.isclose(math.sqrt(sum(x * x for x in cut.embeddings[0])), 1.0, rel_tol=1e-6)
        assert cut.embeddings[0] != out.embeddings[0][:8]  # re-normalised after the cut
        empty = await engine.embed(EmbedJob(model="alpha", inputs=[]))
        assert empty.embeddings == []
        long = "x" * 200
        with pytest.raises(ContextLengthError, match="the input length exceeds the context length"):
            await engine.embed(EmbedJob(model="alpha", inputs=[long], truncate=False,
                                        options={"num_ctx": 64}))
        fitted = await engine.embed(EmbedJob(model="alpha", inputs=[long], options={"num_ctx": 64}))
        assert fitted.prompt_eval_count == 64
        with pytest.raises(InvalidRequestError):
            await engine.embed(EmbedJob(model="alpha", inputs=["a"], dimensions=0))

    run(make_config, engine_store, body)


def test_unload_and_running(make_config, engine_store):
    async def body(engine):
        await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="")))
        [row] = engine.running()
        assert row.model == "alpha:latest" and row.digest and row.details.family == "llama"
        kv = read_gguf_info(engine_store.get("alpha").model_path, keep_arrays=False).kv
        trained = kv["llama.context_length"]
        assert row.context_length == min(4096, trained) and row.size_vram == 0  # capped at the trained ctx
        assert await engine.unload("alpha") is True
        assert engine.running() == []
        assert await engine.unload("alpha") is False

    run(make_config, engine_store, body)


def test_chat_tool_calls_arrive_parsed_and_whole(make_config, engine_store):
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    rules = [{"match": "weather", "reply": call}]
    weather = Tool(name="get_weather", description="Current weather",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}}})

    async def body(engine):
        ask = [Message(role="user", content="What is the weather in Paris?")]
        chunks = await chunks_of(engine.chat(ChatJob(model="tooly", messages=ask, tools=[weather])))
        calls = [tc for c in chunks for tc in c.tool_calls]
        assert len(calls) == 1
        assert calls[0].name == "get_weather" and calls[0].arguments == {"city": "Paris"}
        assert calls[0].id.startswith("call_")
        assert "<tool_call>" not in content(chunks) and chunks[-1].done
        with pytest.raises(CapabilityError, match="does not support tools"):
            await chunks_of(engine.chat(ChatJob(model="thinker", messages=ask, tools=[weather])))

    run(make_config, engine_store, body, rules)


def test_chat_thinking_is_split_from_content(make_config, engine_store):
    rules = [{"match": "sum", "reply": "<think>Two and two make four.</think>The answer is 4."}]

    async def body(engine):
        ask = [Message(role="user", content="What is the sum of 2 and 2?")]
        chunks = await chunks_of(engine.chat(ChatJob(model="thinker", messages=ask)))
        assert "".join(c.thinking for c in chunks) == "Two and two make four."
        assert content(chunks).strip() == "The answer is 4."
        gen = await chunks_of(engine.generate(GenerateJob(model="thinker", prompt="the sum of 2 and 2")))
        assert "".join(c.thinking for c in gen) == "Two and two make four."
        with pytest.raises(CapabilityError, match="does not support thinking"):
            await chunks_of(engine.chat(ChatJob(model="tooly", messages=ask, think=True)))

    run(make_config, engine_store, body, rules)


def test_chat_history_is_truncated_to_the_context(make_config, engine_store):
    async def body(engine):
        history = []
        for i in range(12):
            history.append(Message(role="user", content=f"question number {i} " + "padding " * 6))
            history.append(Message(role="assistant", content=f"answer number {i}"))
        history.append(Message(role="user", content="the final question"))
        system = Message(role="system", content="be brief")
        job = ChatJob(model="alpha", messages=[system, *history], options={"num_ctx": 256, "num_predict": 4})
        chunks = await chunks_of(engine.chat(job))
        m = chunks[-1].metrics
        assert 0 < m.prompt_eval_count <= 256  # older turns were dropped to fit
        # without truncation the same conversation does not fit
        with pytest.raises(ContextLengthError):
            await chunks_of(engine.chat(ChatJob(model="alpha", messages=[system, *history], truncate=False,
                                                options={"num_ctx": 256, "num_predict": 4})))

    run(make_config, engine_store, body)


def test_cancelling_the_consumer_task_stops_the_backend(make_config, engine_store):
    rules = [{"match": "slow", "reply": "s" * 200, "delay": 0.05}]

    async def body(engine):
        got_one = asyncio.Event()

        async def consume():
            async for _ in engine.generate(GenerateJob(model="alpha", prompt="slow")):
                got_one.set()

        task = asyncio.create_task(consume())
        await got_one.wait()
        task.cancel()  # what the server does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
        # the backend's generation thread saw the cancel token and ended (it had ~10 s left)
        assert not [t for t in threading.enumerate() if t.name == "local-runner-generate"]
        ok = await chunks_of(engine.generate(GenerateJob(model="alpha", prompt="next")))
        assert ok[-1].done

    run(make_config, engine_store, body, rules, num_parallel=1)
