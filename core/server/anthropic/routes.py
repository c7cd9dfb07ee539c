"""Route handlers of Anthropic's Messages API: one core chat job, Anthropic's JSON or SSE events."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post
from litestar.params import JSONBody
from litestar.response import Stream

from corral.server import common
from corral.server.anthropic import convert
from corral.server.anthropic import schemas as S
from corral.server.errors import anthropic_body, message_for, status_for
from corral.server.services import services
from corral.server.streaming import ENCODER, SSE, Started, collect, start_stream, unless_disconnected

log = logging.getLogger("corral.server")
Req = Request[Any, Any, Any]

# Errors in the first seconds (unknown model, bad request, prompt too long) get a real status; after
# that the stream starts and pings keep the client's read timeout from firing during a long prompt.
FIRST_CHUNK_GRACE = 2.0
PING_EVERY = 5.0


def _event(ev: S.StreamEvent) -> bytes:
    kind = type(ev).__struct_config__.tag  # the event's "type" is also its SSE event name
    return b"event: " + str(kind).encode() + b"\ndata: " + ENCODER.encode(ev) + b"\n\n"


def _sse(started: Started[Any], state: convert.MessageStream) -> Response[Any]:
    """Anthropic's event stream (a ``Stream``, typed so the handler documents its message model)."""

    async def body() -> AsyncIterator[bytes]:
        items = started.items(PING_EVERY)
        try:
            for ev in state.start():
                yield _event(ev)
            async for chunk in items:
                if chunk is None:
                    yield _event(S.Ping())
                    continue
                for ev in state.feed(chunk):
                    yield _event(ev)
        except Exception as exc:
            # compat(anthropic): a failure after the stream started is an "error" event.
            log.info("stream ended with an error: %s", message_for(exc))
            yield (
                b"event: error\ndata: "
                + ENCODER.encode(anthropic_body(message_for(exc), status_for(exc)))
                + b"\n\n"
            )
        finally:
            await items.aclose()

    return Stream(body(), media_type=SSE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@post("/v1/messages", status_code=200, operation_id="anthropic_messages", tags=["anthropic"])
async def messages(request: Req, data: JSONBody[S.MessagesRequest]) -> Response[S.Message]:
    """Create a message; Anthropic's SSE event sequence when ``stream`` is true."""
    svc, began = services(request), time.perf_counter()
    common.note_end_user(request, convert.end_user(data))
    job = convert.chat_job(data)
    stops = list(data.stop_sequences or [])
    single = bool(data.tool_choice and data.tool_choice.disable_parallel_tool_use)
    omit = bool(data.thinking and data.thinking.display == "omitted")
    started = await start_stream(
        svc.metrics.observe(job.model, began, svc.engine.chat(job)), FIRST_CHUNK_GRACE
    )
    if not data.stream:

        async def rest() -> AsyncIterator[Any]:
            async for c in started.items(PING_EVERY):
                if c is not None:
                    yield c

        done = await unless_disconnected(request.receive, collect(rest()))
        return Response(convert.message(data.model, done, stops, single, omit))
    return _sse(started, convert.MessageStream(data.model, stops, single, omit))


@post("/v1/messages/count_tokens", status_code=200, operation_id="anthropic_count_tokens", tags=["anthropic"])
async def count_tokens(request: Req, data: JSONBody[S.CountTokensRequest]) -> S.CountTokensResponse:
    """The prompt tokens a request would use (the model is loaded to count with its tokenizer)."""
    n = await services(request).engine.count_tokens(convert.chat_job(data))
    return S.CountTokensResponse(input_tokens=n)


ROUTES = [messages, count_tokens]
