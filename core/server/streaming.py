"""Streaming plumbing: the first chunk before any byte, NDJSON and SSE framing, in-band errors."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import anyio
import msgspec
from litestar import Response
from litestar.response import Stream

from corral.errors import GenerationCancelledError
from corral.jobs import Chunk
from corral.server.errors import message_for, native_body, openai_body, status_for

log = logging.getLogger("corral.server")

# One encoder for the whole process: building one per chunk is a measurable cost at high token rates.
ENCODER = msgspec.json.Encoder()

T = TypeVar("T")
U = TypeVar("U")
S = TypeVar("S", bound=msgspec.Struct)

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


async def open_stream(source: AsyncIterator[T] | Awaitable[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Start a core stream and wait for its first item.

    Errors raised before the first item (unknown model, bad options, busy queue) propagate here, so
    the handler answers them with a real HTTP status; only later errors go in-band.
    """
    if inspect.isawaitable(source):
        source = await source
    it = source.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        return _empty()
    except BaseException:
        await close_quietly(it)
        raise
    return _prepend(first, it)


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _prepend(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await close_quietly(rest)


async def close_quietly(it: AsyncIterator[Any]) -> None:
    """Close an async iterator even while the surrounding task is being cancelled (client gone).

    Shielded so the engine's cleanup (cancel the sequence, free the slot) runs to the end.
    """
    aclose = getattr(it, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await aclose()
        except Exception:  # cleanup of an already-failed stream; the first error was reported
            log.debug("error while closing a stream", exc_info=True)


def ndjson_response(items: AsyncIterator[S]) -> Response[Any]:
    """A native streaming response: one JSON object per line; an error after the start is a last line.

    A ``Stream``, typed as a plain response so a handler can declare the model of its lines.
    """

    async def body() -> AsyncIterator[bytes]:
        try:
            async for item in items:
                yield ENCODER.encode(item) + b"\n"
        except Exception as exc:
            # compat(ollama): server/routes.go streamResponse writes {"error": ...} and keeps status 200.
            _log_inband(exc)
            yield ENCODER.encode(native_body(message_for(exc))) + b"\n"
        finally:
            await close_quietly(items)

    return Stream(body(), media_type=NDJSON)


def sse_response(items: AsyncIterator[S]) -> Response[Any]:
    """An OpenAI streaming response: ``data: {json}`` events ending with ``data: [DONE]`` (a ``Stream``)."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for item in items:
                yield b"data: " + ENCODER.encode(item) + b"\n\n"
        except Exception as exc:
            # compat(openai): an event with an "error" key makes the SDK raise APIError.
            _log_inband(exc)
            yield b"data: " + ENCODER.encode(openai_body(message_for(exc), status_for(exc))) + b"\n\n"
        finally:
            await close_quietly(items)
        yield b"data: [DONE]\n\n"

    return Stream(body(), media_type=SSE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _log_inband(exc: BaseException) -> None:
    if status_for(exc) >= 500:
        log.warning("stream ended with an error: %s", message_for(exc), exc_info=exc)
    else:
        log.info("stream ended with an error: %s", message_for(exc))


async def amap(items: AsyncIterator[T], fn: Callable[[T], U | None]) -> AsyncIterator[U]:
    """Map a stream, dropping items for which ``fn`` returns None; closes the source when done."""
    try:
        async for item in items:
            out = fn(item)
            if out is not None:
                yield out
    finally:
        await close_quietly(items)


async def aflat(items: AsyncIterator[T], fn: Callable[[T], list[U]]) -> AsyncIterator[U]:
    """Map each item to zero or more outputs; closes the source when done."""
    try:
        async for item in items:
            for out in fn(item):
                yield out
    finally:
        await close_quietly(items)


def fold(chunks: list[Chunk]) -> Chunk:
    """One chunk for ``stream: false``: texts joined, calls and logprobs merged, the last one's metrics."""
    last = next((c for c in reversed(chunks) if c.done), Chunk(done=True, done_reason="stop"))
    return Chunk(content="".join(c.content for c in chunks), thinking="".join(c.thinking for c in chunks),
                 tool_calls=[t for c in chunks for t in c.tool_calls],
                 logprobs=[e for c in chunks for e in c.logprobs], done=True, done_reason=last.done_reason,
                 metrics=last.metrics, context=last.context, stop_string=last.stop_string)


async def collect(chunks: AsyncIterator[Chunk]) -> Chunk:
    """Fold a core stream into one chunk for ``stream: false`` (see ``fold``)."""
    items: list[Chunk] = []
    try:
        async for c in chunks:
            items.append(c)
    finally:
        await close_quietly(chunks)
    return fold(items)


_END = object()


async def open_merged(sources: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Several core streams started together (``n`` choices), merged: their items as they come, each
    with its stream's index (order kept within a stream).

    Like ``open_stream``, this returns once every stream has its first item, so an error before that
    (unknown model, bad options) gets a real HTTP status. Every stream is read as fast as it produces,
    whatever the consumer does, so none holds its slot while another waits for one. An error in one
    stream ends them all; closing the merge closes every stream.
    """
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    started = [asyncio.Event() for _ in sources]
    early: list[BaseException | None] = [None] * len(sources)

    async def pump(i: int, it: AsyncIterator[T]) -> None:
        try:
            async for item in it:
                queue.put_nowait((i, item, None))
                started[i].set()
            queue.put_nowait((i, _END, None))
        except Exception as exc:
            if not started[i].is_set():
                early[i] = exc
            queue.put_nowait((i, _END, exc))
        finally:
            started[i].set()

    tasks = [asyncio.ensure_future(pump(i, it)) for i, it in enumerate(sources)]

    async def stop() -> None:
        with anyio.CancelScope(shield=True):
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for it in sources:
                await close_quietly(it)

    try:
        for ev in started:
            await ev.wait()
    except BaseException:
        await stop()
        raise
    failed = next((e for e in early if e is not None), None)
    if failed is not None:
        await stop()
        raise failed

    async def merged() -> AsyncIterator[tuple[int, T]]:
        try:
            remaining = len(tasks)
            while remaining:
                i, item, exc = await queue.get()
                if exc is not None:
                    raise exc
                if item is _END:
                    remaining -= 1
                    continue
                yield i, item
        finally:
            await stop()

    return merged()


async def collect_all(merged: AsyncIterator[tuple[int, Chunk]], n: int) -> list[Chunk]:
    """Each of ``n`` merged streams folded for ``stream: false``."""
    per: list[list[Chunk]] = [[] for _ in range(n)]
    try:
        async for i, c in merged:
            per[i].append(c)
    finally:
        await close_quietly(merged)
    return [fold(items) for items in per]


async def thread_iter(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking iterator (``Store.create``) in a worker thread, one item at a time.

    Each ``next()`` is its own thread hop, so the event loop never blocks and a client that goes
    away stops the iteration at the next item.
    """
    it = await anyio.to_thread.run_sync(make)
    sentinel = object()
    while True:
        item = await anyio.to_thread.run_sync(next, it, sentinel)
        if item is sentinel:
            return
        yield item  # type: ignore[misc]


async def last_item(items: AsyncIterator[T]) -> T | None:
    """Drain a stream and return its last item (``stream: false`` on pull, push and create)."""
    last = None
    try:
        async for item in items:
            last = item
    finally:
        await close_quietly(items)
    return last


async def unless_disconnected(receive: Callable[[], Awaitable[Any]], work: Awaitable[T]) -> T:
    """Await ``work`` (a whole non-streamed answer), cancelling it if the client disconnects first.

    The body has been read by then, so the next ASGI message can only be ``http.disconnect``; the
    engine's cleanup frees the sequence's slot at once instead of decoding for nobody.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise GenerationCancelledError("request canceled: the client disconnected")


class Started(Generic[T]):
    """A core stream whose first item was awaited for a grace period (see ``start_stream``)."""

    def __init__(self, it: AsyncIterator[T], first: asyncio.Task[T]) -> None:
        self.it, self.first = it, first

    async def items(self, every: float) -> AsyncGenerator[T | None, None]:
        """The stream's items; ``None`` every ``every`` seconds while the first is still coming."""
        try:
            while not self.first.done():
                done, _ = await asyncio.wait({self.first}, timeout=every)
                if not done:
                    yield None
            try:
                first = self.first.result()
            except StopAsyncIteration:
                return
            yield first
            async for item in self.it:
                yield item
        finally:
            if not self.first.done():
                self.first.cancel()
                with contextlib.suppress(BaseException):
                    await self.first
            await close_quietly(self.it)


async def start_stream(source: AsyncIterator[T], grace: float) -> Started[T]:
    """Start a core stream and wait up to ``grace`` seconds for its first item.

    Errors raised by then (unknown model, bad options, a prompt that does not fit) propagate here and
    get a real HTTP status; a longer wait (a big prompt being evaluated) lets the response start, so
    the client sees keep-alive events instead of silence, and a later error goes in-band.
    """
    it = source.__aiter__()
    first = asyncio.ensure_future(it.__anext__())
    await asyncio.wait({first}, timeout=grace)
    if first.done() and not first.cancelled() and first.exception() is not None:
        exc = first.exception()
        if not isinstance(exc, StopAsyncIteration):
            await close_quietly(it)
            raise exc  # type: ignore[misc]
    return Started(it, first)
