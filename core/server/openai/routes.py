"""Route handlers of the OpenAI-compatible API: same core jobs as /api, OpenAI shapes and SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, JSONBody

from corral.errors import ModelNotFoundError
from corral.jobs import ChatJob, Chunk, GenerateJob
from corral.server import common
from corral.server.fetch import fetch_images
from corral.server.openai import answers, convert
from corral.server.openai import schemas as S
from corral.server.services import Services, services
from corral.server.streaming import aflat, collect_all, open_merged, sse_response, unless_disconnected
from corral.store.records import ModelRecord

Req = Request[Any, Any, Any]


async def _choices(svc: Services, job: ChatJob | GenerateJob, n: int,
                   started: float) -> AsyncIterator[tuple[int, Chunk]]:
    """``n`` streams of the same job, started together, each in its own sequence (its own slot), merged;
    with a seed, choice i samples with seed + i."""
    jobs = [job] + [msgspec.structs.replace(job, options=convert.with_seed_offset(job.options, i))
                    for i in range(1, n)]
    run = svc.engine.chat if isinstance(job, ChatJob) else svc.engine.generate
    return await open_merged([svc.metrics.observe(job.model, started, run(j)) for j in jobs])  # type: ignore[arg-type]


@post("/v1/chat/completions", status_code=200, operation_id="openai_chat", tags=["openai"])
async def chat_completions(request: Req,
                           data: JSONBody[S.ChatCompletionRequest]) -> Response[S.ChatCompletion]:
    """Chat completion (``n`` choices); SSE ``chat.completion.chunk`` events when ``stream`` is true."""
    svc, started = services(request), time.perf_counter()
    common.note_end_user(request, convert.end_user(data.user))
    n = convert.choices(data.n)
    fetched = await fetch_images(convert.remote_image_urls(data), enabled=svc.config.fetch_images,
                                 max_bytes=svc.config.max_media_size)
    job = convert.chat_job(data, fetched)
    if data.debug_render_only:
        return Response(answers.rendered_chat(data.model, await svc.engine.render(job)))
    merged = await _choices(svc, job, n, started)
    single = data.parallel_tool_calls is False
    if not data.stream:
        done = await unless_disconnected(request.receive, collect_all(merged, n))
        return Response(answers.chat_completion(data.model, done, single_call=single))
    include_usage = bool(data.stream_options and data.stream_options.include_usage)
    state = answers.ChatStream(data.model, include_usage, n, single_call=single)
    return sse_response(aflat(merged, lambda item: state.feed(item[1], item[0])))


@post("/v1/completions", status_code=200, operation_id="openai_completions", tags=["openai"])
async def completions(request: Req, data: JSONBody[S.CompletionRequest]) -> Response[S.Completion]:
    """Legacy text completion (``n`` choices, ``echo``); SSE ``text_completion`` events when streaming."""
    svc, started = services(request), time.perf_counter()
    common.note_end_user(request, convert.end_user(data.user))
    n = convert.choices(data.n)
    job = convert.completion_job(data)
    if data.debug_render_only:
        return Response(answers.rendered_completion(data.model, await svc.engine.render(job)))
    echo = job.prompt if data.echo else ""
    merged = await _choices(svc, job, n, started)
    if not data.stream:
        done = await unless_disconnected(request.receive, collect_all(merged, n))
        return Response(answers.completion(data.model, done, echo=echo))
    include_usage = bool(data.stream_options and data.stream_options.include_usage)
    state = answers.CompletionStream(data.model, include_usage, n, echo=echo)
    return sse_response(aflat(merged, lambda item: state.feed(item[1], item[0])))


@post("/v1/embeddings", status_code=200, operation_id="openai_embeddings", tags=["openai"])
async def embeddings(request: Req, data: JSONBody[S.EmbeddingRequest]) -> S.EmbeddingList:
    """Embeddings as float lists or base64 little-endian float32 (the SDK's default)."""
    svc = services(request)
    common.note_end_user(request, convert.end_user(data.user))
    job, b64 = convert.embed_job(data)
    out = await unless_disconnected(request.receive, svc.engine.embed(job))
    svc.metrics.tokens_in.inc(data.model, amount=out.prompt_eval_count)
    return answers.embeddings(data.model, out, b64)


def _model(r: ModelRecord) -> S.Model:
    # compat(ollama): owned_by is the namespace ("library" for official models).
    owner = r.name.namespace or "library"
    return S.Model(id=r.display, object="model", created=int(r.modified_at.timestamp()), owned_by=owner)


@get("/v1/models", operation_id="openai_models", tags=["openai"])
async def models(request: Req) -> S.ModelList:
    """Local models in OpenAI's list shape (``data`` is never null)."""
    records = await anyio.to_thread.run_sync(services(request).store.list)
    return S.ModelList(object="list", data=[_model(r) for r in records])


@get("/v1/models/{model:path}", operation_id="openai_model", tags=["openai"])
async def model(request: Req, model: FromPath[str]) -> S.Model:
    """One model; namespaced names (``ns/name:tag``) work too."""
    name = model.lstrip("/")
    if not name:
        raise ModelNotFoundError("model '' not found")
    record = await anyio.to_thread.run_sync(services(request).store.get, name)
    return _model(record)


ROUTES = [chat_completions, completions, embeddings, models, model]
