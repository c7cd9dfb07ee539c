"""Route handlers of the Responses API: one core chat job, the response object or its SSE events."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from corral.errors import InvalidRequestError, ModelNotFoundError
from corral.server import common
from corral.server.errors import message_for
from corral.server.responses import convert
from corral.server.responses import schemas as S
from corral.server.responses.store import ResponseStore
from corral.server.responses.stream import ResponseBuilder
from corral.server.services import services
from corral.server.streaming import ENCODER, SSE, collect, start_stream, unless_disconnected

log = logging.getLogger("corral.server")
Req = Request[Any, Any, Any]

FIRST_CHUNK_GRACE = 2.0  # errors before this get a real status; after it the stream has started
KEEPALIVE_EVERY = 5.0  # SSE comments while a long prompt is evaluated


def response_store(request: Req) -> ResponseStore:
    """The app's store of responses (created on first use)."""
    state = request.app.state
    if getattr(state, "responses", None) is None:
        state.responses = ResponseStore()
    return state.responses  # type: ignore[no-any-return]


def _history(request: Req, req: S.ResponsesRequest) -> list[Any]:
    if not req.previous_response_id:
        return []
    stored = response_store(request).get(req.previous_response_id)
    if stored is None:
        raise InvalidRequestError(
            f"previous response with id '{req.previous_response_id}' not found "
            "(responses are kept in memory, only when stored, and only for a while)"
        )
    return list(stored.conversation)


def _keep(request: Req, req: S.ResponsesRequest, plan: convert.Plan, built: ResponseBuilder) -> None:
    if req.store is not False and built.status != "failed":
        response_store(request).put(built.id, req.model, built.response(),
                                    plan.conversation + built.assistant_turns())


def _sse(kind: str, payload: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + ENCODER.encode(payload) + b"\n\n"


@post("/v1/responses", status_code=200, operation_id="openai_responses", tags=["openai"])
async def create(request: Req, data: JSONBody[S.ResponsesRequest]) -> Response[S.Response]:
    """Create a response; the Responses event sequence (SSE) when ``stream`` is true."""
    svc, began = services(request), time.perf_counter()
    common.note_end_user(request, convert.end_user(data))
    plan = convert.plan(data, _history(request, data))
    built = ResponseBuilder(data, plan)
    chunks = svc.metrics.observe(plan.job.model, began, svc.engine.chat(plan.job))
    started = await start_stream(chunks, FIRST_CHUNK_GRACE)
    if not data.stream:

        async def rest() -> AsyncIterator[Any]:
            async for c in started.items(KEEPALIVE_EVERY):
                if c is not None:
                    yield c

        built.feed(await unless_disconnected(request.receive, collect(rest())))
        _keep(request, data, plan, built)
        return Response(built.response())

    async def body() -> AsyncIterator[bytes]:
        items = started.items(KEEPALIVE_EVERY)
        try:
            for ev in built.start():
                yield _sse(ev["type"], ev)
            async for chunk in items:
                if chunk is None:
                    yield b": keep-alive\n\n"
                    continue
                for ev in built.feed(chunk):
                    yield _sse(ev["type"], ev)
            _keep(request, data, plan, built)
        except Exception as exc:
            log.info("stream ended with an error: %s", message_for(exc))
            for ev in built.fail(message_for(exc)):
                yield _sse(ev["type"], ev)
        finally:
            await items.aclose()

    # a Stream of events; the handler documents the Response model that the last event carries
    stream: Response[Any] = Stream(body(), media_type=SSE,
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return stream


@get(
    "/v1/responses/{response_id:str}",
    operation_id="openai_response_get",
    tags=["openai"],
)
async def retrieve(request: Req, response_id: FromPath[str]) -> S.Response:
    """A stored response (kept in memory when created with ``store`` not false)."""
    stored = response_store(request).get(response_id)
    if stored is None:
        raise ModelNotFoundError(f"response with id '{response_id}' not found")
    return stored.body  # type: ignore[no-any-return]


@delete(
    "/v1/responses/{response_id:str}", status_code=200, operation_id="openai_response_delete", tags=["openai"]
)
async def remove(request: Req, response_id: FromPath[str]) -> S.DeletedResponse:
    """Forget a stored response."""
    if not response_store(request).delete(response_id):
        raise ModelNotFoundError(f"response with id '{response_id}' not found")
    return S.DeletedResponse(id=response_id, object="response.deleted", deleted=True)


ROUTES = [create, retrieve, remove]
