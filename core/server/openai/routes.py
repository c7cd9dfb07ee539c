"""Route handlers of the OpenAI-compatible API: same core jobs as /api, OpenAI shapes and SSE."""

from __future__ import annotations

import time
from typing import Any

import anyio
from litestar import Request, Response, get, post
from litestar.params import FromPath, JSONBody

from corral.errors import ModelNotFoundError
from corral.server.fetch import fetch_images
from corral.server.openai import convert
from corral.server.openai import schemas as S
from corral.server.services import services
from corral.server.streaming import aflat, collect, open_stream, sse_response, unless_disconnected
from corral.store.records import ModelRecord

Req = Request[Any, Any, Any]


@post("/v1/chat/completions", status_code=200, operation_id="openai_chat", tags=["openai"])
async def chat_completions(request: Req,
                           data: JSONBody[S.ChatCompletionRequest]) -> Response[S.ChatCompletion]:
    """Chat completion; SSE ``chat.completion.chunk`` events when ``stream`` is true."""
    svc, started = services(request), time.perf_counter()
    fetched = await fetch_images(convert.remote_image_urls(data), enabled=svc.config.fetch_images,
                                 max_bytes=svc.config.max_media_size)
    job = convert.chat_job(data, fetched)
    chunks = svc.metrics.observe(job.model, started, await open_stream(svc.engine.chat(job)))
    if not data.stream:
        done = await unless_disconnected(request.receive, collect(chunks))
        return Response(convert.chat_completion(data.model, done))
    state = convert.ChatStream(data.model, bool(data.stream_options and data.stream_options.include_usage))
    return sse_response(aflat(chunks, state.feed))


@post("/v1/completions", status_code=200, operation_id="openai_completions", tags=["openai"])
async def completions(request: Req, data: JSONBody[S.CompletionRequest]) -> Response[S.Completion]:
    """Legacy text completion; SSE ``text_completion`` events when ``stream`` is true."""
    svc, started = services(request), time.perf_counter()
    job = convert.completion_job(data)
    chunks = svc.metrics.observe(job.model, started, await open_stream(svc.engine.generate(job)))
    if not data.stream:
        done = await unless_disconnected(request.receive, collect(chunks))
        return Response(convert.completion(data.model, done))
    include_usage = bool(data.stream_options and data.stream_options.include_usage)
    state = convert.CompletionStream(data.model, include_usage)
    return sse_response(aflat(chunks, state.feed))


@post("/v1/embeddings", status_code=200, operation_id="openai_embeddings", tags=["openai"])
async def embeddings(request: Req, data: JSONBody[S.EmbeddingRequest]) -> S.EmbeddingList:
    """Embeddings as float lists or base64 little-endian float32 (the SDK's default)."""
    svc = services(request)
    job, b64 = convert.embed_job(data)
    out = await svc.engine.embed(job)
    svc.metrics.tokens_in.inc(data.model, amount=out.prompt_eval_count)
    return convert.embeddings(data.model, out, b64)


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
