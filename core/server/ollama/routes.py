"""Route handlers of the Ollama native API: decode, convert to a core job, run it, encode."""

from __future__ import annotations

import time
from typing import Any

import anyio
from litestar import Request, Response, delete, get, head, post
from litestar.params import FromPath, JSONBody

import corral
from corral.conversation import Message
from corral.errors import InvalidRequestError
from corral.server import common
from corral.server.ollama import convert
from corral.server.ollama import schemas as W
from corral.server.services import services
from corral.server.streaming import (
    amap,
    collect,
    last_item,
    ndjson_response,
    open_stream,
    thread_iter,
    unless_disconnected,
)
from corral.spec import GGUFFacts, ModelDetails
from corral.store import ShowOverrides
from corral.store.records import ModelRecord
from corral.store.resolve import model_spec

Req = Request[Any, Any, Any]


def _empty_ok() -> Response[None]:
    """200 with an empty body, as Ollama answers copy and delete (Litestar would render None as null)."""
    return Response(b"", status_code=200)  # type: ignore[arg-type]  # bytes are sent as they are


def _streaming(flag: bool | None) -> bool:
    # compat(ollama): streaming is the default when "stream" is absent.
    return flag is None or flag


# ---- generation ----------------------------------------------------------------------------------
@post("/api/generate", status_code=200, operation_id="generate", tags=["ollama"])
async def generate(request: Req, data: JSONBody[W.GenerateRequest]) -> Response[W.GenerateResponse]:
    """Complete a prompt; NDJSON chunks unless ``stream`` is false."""
    svc, started = services(request), time.perf_counter()
    job = convert.generate_job(data)
    if data.debug_render_only:  # compat(ollama): one JSON object, streaming or not
        rendered = await svc.engine.render(job)
        return Response(W.GenerateResponse(model=data.model, created_at=common.now_rfc3339(), response="",
                                           done=False, debug_info=convert.debug_info(rendered)))
    chunks = svc.metrics.observe(job.model, started, await open_stream(svc.engine.generate(job)))
    if not _streaming(data.stream):
        done = await unless_disconnected(request.receive, collect(chunks))
        return Response(convert.generate_response(data.model, done))
    return ndjson_response(amap(chunks, lambda c: convert.generate_response(data.model, c)))


@post("/api/chat", status_code=200, operation_id="chat", tags=["ollama"])
async def chat(request: Req, data: JSONBody[W.ChatRequest]) -> Response[W.ChatResponse]:
    """One chat turn; NDJSON chunks unless ``stream`` is false."""
    svc, started = services(request), time.perf_counter()
    job = convert.chat_job(data)
    if data.debug_render_only:  # compat(ollama): one JSON object, streaming or not
        rendered = await svc.engine.render(job)
        return Response(W.ChatResponse(model=data.model, created_at=common.now_rfc3339(),
                                       message=W.ResponseMessage(role="", content=""), done=False,
                                       debug_info=convert.debug_info(rendered)))
    chunks = svc.metrics.observe(job.model, started, await open_stream(svc.engine.chat(job)))
    if not _streaming(data.stream):
        done = await unless_disconnected(request.receive, collect(chunks))
        return Response(convert.chat_response(data.model, done))
    return ndjson_response(amap(chunks, lambda c: convert.chat_response(data.model, c)))


@post("/api/embed", status_code=200, operation_id="embed", tags=["ollama"])
async def embed(request: Req, data: JSONBody[W.EmbedRequest]) -> W.EmbedResponse:
    """Embeddings for one input or a list (L2-normalized)."""
    svc = services(request)
    out = await unless_disconnected(request.receive, svc.engine.embed(convert.embed_job(data)))
    svc.metrics.tokens_in.inc(data.model, amount=out.prompt_eval_count)
    return W.EmbedResponse(model=data.model, embeddings=out.embeddings, total_duration=out.total_duration,
                           load_duration=out.load_duration, prompt_eval_count=out.prompt_eval_count)


@post("/api/embeddings", status_code=200, operation_id="embeddings", tags=["ollama"])
async def embeddings(request: Req, data: JSONBody[W.EmbeddingsRequest]) -> W.EmbeddingsResponse:
    """The legacy single embedding (not normalized)."""
    svc = services(request)
    out = await unless_disconnected(request.receive, svc.engine.embed(convert.embeddings_job(data)))
    svc.metrics.tokens_in.inc(data.model, amount=out.prompt_eval_count)
    return W.EmbeddingsResponse(embedding=out.embeddings[0] if out.embeddings else [])


@post("/api/tokenize", status_code=200, operation_id="tokenize", tags=["ollama"])
async def tokenize(request: Req, data: JSONBody[W.TokenizeRequest]) -> W.TokenizeResponse:
    """Token ids of ``content`` in the model's vocabulary (``add_special``, ``parse_special``)."""
    tokens = await services(request).engine.tokenize(convert.tokenize_job(data))
    return W.TokenizeResponse(model=data.model, tokens=tokens)


@post("/api/detokenize", status_code=200, operation_id="detokenize", tags=["ollama"])
async def detokenize(request: Req, data: JSONBody[W.DetokenizeRequest]) -> W.DetokenizeResponse:
    """The text of ``tokens``; control tokens render as their text unless ``render_special`` is false."""
    content = await services(request).engine.detokenize(convert.detokenize_job(data))
    return W.DetokenizeResponse(model=data.model, content=content)


# ---- models --------------------------------------------------------------------------------------
def _details(d: ModelDetails, gguf: GGUFFacts | None = None) -> W.Details:
    """Wire details; the lengths come from the config blob, else (as Ollama reads them) the GGUF."""
    context = d.context_length or (gguf.context_length if gguf else None)
    embedding = d.embedding_length or (gguf.embedding_length if gguf else None)
    return W.Details(parent_model=d.parent_model, format=d.format or "gguf", family=d.family,
                     families=list(d.families) if d.families is not None else None,
                     parameter_size=d.parameter_size, quantization_level=d.quantization_level,
                     context_length=context or 0, embedding_length=embedding or 0)


def _listed(records: list[ModelRecord]) -> list[W.ListedModel]:
    """/api/tags entries with capabilities and lengths; each GGUF header is read once (then cached)."""
    out = []
    for r in records:
        spec = model_spec(r)
        out.append(W.ListedModel(name=r.display, model=r.display, modified_at=common.rfc3339(r.modified_at),
                                 size=r.size, digest=r.digest, details=_details(r.details, spec.gguf),
                                 capabilities=list(spec.capabilities) or None))
    return out


@get(["/api/tags"], operation_id="tags", tags=["ollama"])
async def tags(request: Req) -> W.TagsResponse:
    """Local models, newest first, with their capabilities, context and embedding lengths."""
    store = services(request).store
    listed = await anyio.to_thread.run_sync(lambda: _listed(store.list()))
    return W.TagsResponse(models=listed)


@head("/api/tags", operation_id="tags_head", tags=["ollama"])
async def tags_head() -> None:
    """HEAD /api/tags: the list is always available."""


@get("/api/ps", operation_id="ps", tags=["ollama"])
async def ps(request: Req) -> W.PsResponse:
    """Loaded models, the longest remaining keep-alive first."""
    return W.PsResponse(models=[
        W.PsModel(name=r.name, model=r.model, size=r.size, digest=r.digest,
                  expires_at=common.rfc3339(r.expires_at), size_vram=r.size_vram,
                  context_length=r.context_length, details=_details(r.details))
        for r in services(request).engine.running()])


def _model_name(data: W.ShowRequest | W.DeleteRequest | W.TransferRequest) -> str:
    return common.require_model(data.model or data.name)


def _no_credentials(data: W.TransferRequest) -> None:
    """compat(ollama): the Go client always sends these two, empty; Ollama ignores them, so a value in
    them is a client expecting a login that never happens."""
    if data.username or data.password:
        raise InvalidRequestError("username and password are not supported on /api/pull and /api/push "
                                  "(Ollama ignores them too): leave them empty")


def _wire_message(m: Message) -> W.ChatMessage:
    return W.ChatMessage(role=m.role, content=m.content, thinking=m.thinking or None,
                         tool_calls=convert.tool_calls(m.tool_calls), tool_name=m.tool_name or None)


@post("/api/show", status_code=200, operation_id="show", tags=["ollama"])
async def show(request: Req, data: JSONBody[W.ShowRequest]) -> W.ShowResponse:
    """Everything about one model: Modelfile, parameters, template, details, GGUF metadata; the
    request's ``system``, ``template`` and ``options`` take the model's place in what is reported."""
    name = _model_name(data)
    overrides = ShowOverrides(system=data.system, template=data.template, options=dict(data.options or {}))
    info = await anyio.to_thread.run_sync(services(request).store.show, name, data.verbose, overrides)
    return W.ShowResponse(
        model_info=info.model_info or {}, modelfile=info.modelfile, parameters=info.parameters,
        template=info.template, system=info.system, license=info.license, details=_details(info.details),
        messages=[_wire_message(m) for m in info.messages] or None, capabilities=info.capabilities or None,
        projector_info=info.projector_info, draft_info=info.draft_info, tensors=info.tensors,
        modified_at=common.rfc3339(info.modified_at), renderer=info.renderer, parser=info.parser,
        requires=info.requires)


@post("/api/copy", status_code=200, operation_id="copy", tags=["ollama"])
async def copy(request: Req, data: JSONBody[W.CopyRequest]) -> Response[None]:
    """Copy a model under a new name (the manifest only; blobs are shared)."""
    src, dst = common.require_model(data.source), common.require_model(data.destination)
    await anyio.to_thread.run_sync(services(request).store.copy, src, dst)
    return _empty_ok()


@delete("/api/delete", status_code=200, operation_id="delete", tags=["ollama"])
async def delete_model(request: Req, data: JSONBody[W.DeleteRequest]) -> Response[None]:
    """Delete a model; layers nothing else uses go too. A loaded copy is unloaded first."""
    svc = services(request)
    name = _model_name(data)
    record = await anyio.to_thread.run_sync(svc.store.get, name)
    await svc.engine.unload(record.display)
    await anyio.to_thread.run_sync(svc.store.delete, name)
    return _empty_ok()


async def _progress(items: Any, stream: bool | None) -> Response[W.ProgressResponse]:
    items = await open_stream(amap(items, lambda p: W.ProgressResponse(
        status=p.status, digest=p.digest or "", total=p.total or 0, completed=p.completed or 0)))
    if _streaming(stream):
        return ndjson_response(items)
    last = await last_item(items)
    return Response(last or W.ProgressResponse(status="success"))


@post("/api/pull", status_code=200, operation_id="pull", tags=["ollama"])
async def pull(request: Req, data: JSONBody[W.TransferRequest]) -> Response[W.ProgressResponse]:
    """Pull a model from its registry, streaming progress."""
    name = _model_name(data)
    _no_credentials(data)
    return await _progress(services(request).store.pull(name, insecure=data.insecure), data.stream)


@post("/api/push", status_code=200, operation_id="push", tags=["ollama"])
async def push(request: Req, data: JSONBody[W.TransferRequest]) -> Response[W.ProgressResponse]:
    """Push a model to its registry, streaming progress."""
    name = _model_name(data)
    _no_credentials(data)
    return await _progress(services(request).store.push(name, insecure=data.insecure), data.stream)


@post("/api/create", status_code=200, operation_id="create", tags=["ollama"])
async def create(request: Req, data: JSONBody[W.CreateRequest]) -> Response[W.ProgressResponse]:
    """Create a model from another model or uploaded blobs, streaming progress."""
    from corral.store.records import CreateSpec

    name = common.require_model(data.model or data.name)
    if data.modelfile is not None:
        # compat(ollama): Ollama dropped the Modelfile text from /api/create (it now ignores it); its
        # FROM would name a path on the server, which corral never opens for a client
        raise InvalidRequestError("modelfile is not supported by /api/create: send its parts (from, files, "
                                  "template, system, parameters, ...) as `ollama create` and `corral create` "
                                  "do")
    spec = CreateSpec(from_=data.from_, files=dict(data.files or {}), adapters=dict(data.adapters or {}),
                      template=data.template, system=data.system, license=data.license,
                      parameters=data.parameters, messages=[convert.message(m) for m in data.messages]
                      if data.messages is not None else None, renderer=data.renderer, parser=data.parser,
                      requires=data.requires, draft_files=dict(data.draft_files or {}))
    store = services(request).store
    quantize = data.quantize or data.quantization
    return await _progress(thread_iter(lambda: store.create(name, spec, quantize, data.draft_quantize)),
                           data.stream)


@head("/api/blobs/{digest:str}", operation_id="blob_exists", tags=["ollama"])
async def blob_exists(request: Req, digest: FromPath[str]) -> Response[None]:
    """200 when the blob is stored, 404 otherwise."""
    found = await anyio.to_thread.run_sync(services(request).store.has_blob, digest)
    return Response(None, status_code=200 if found else 404)


@post("/api/blobs/{digest:str}", operation_id="blob_upload", tags=["ollama"])
async def blob_upload(request: Req, digest: FromPath[str]) -> Response[None]:
    """Store the raw body as a blob; 201 when created, 200 when it was already there."""
    created = await services(request).store.put_blob(digest, request.stream())
    return Response(None, status_code=201 if created else 200)


# ---- health --------------------------------------------------------------------------------------
@get("/", operation_id="root", tags=["ollama"], media_type="text/plain")
async def root() -> str:
    """Health check: clients look for this exact text."""
    return "Ollama is running"


@head("/", operation_id="root_head", tags=["ollama"])
async def root_head() -> None:
    """HEAD health check."""


@get("/api/version", operation_id="version", tags=["ollama"])
async def version() -> W.VersionResponse:
    """The Ollama API version corral implements (clients gate features on it) and corral's own."""
    return W.VersionResponse(version=corral.OLLAMA_API_VERSION, corral_version=corral.__version__)


@head("/api/version", operation_id="version_head", tags=["ollama"])
async def version_head() -> None:
    """HEAD version check."""


ROUTES = [generate, chat, embed, embeddings, tokenize, detokenize,
          tags, tags_head, ps, show, copy, delete_model, pull, push,
          create, blob_exists, blob_upload, root, root_head, version, version_head]
