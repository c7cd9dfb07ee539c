"""Untrusted templates (Modelfile Go TEMPLATEs, GGUF Jinja templates) rendered in worker processes.

A render is CPU-bound Python: on a thread of the server it holds the GIL the event loop needs, so a
hostile template (or only a huge prompt) slows every other request. Here a small pool of worker
processes (``python -m corral.prompts.renderworker``), all started at the first render, does the
rendering; each worker runs at a lower CPU priority with its address space capped, and every render is
bounded twice: by the worker's own time and size limits (``jinja_bounds``, ``goexec.Limits``) and by
this side, which kills a worker that has not answered in time. A cut-off render costs at most its limits.

``render`` blocks: call it from a worker thread (the engine plans prompts on one), never the loop.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import msgspec

from corral.conversation import Message, Tool
from corral.errors import TemplateError

log = logging.getLogger("corral.prompts")

POOL_SIZE = 2  # renders at once; more wait (a render takes milliseconds unless it is hostile)
TIME_LIMIT_S = 2.0  # the renderers' own limit (jinja_bounds.TIME_LIMIT_S, goexec.TIME_LIMIT_S)
GRACE_S = 3.0  # past the limit before a worker is killed: its own check normally fires first
VALIDATE_RENDERS = 4  # gotemplate.validate renders each template this many times
WORKER_MEMORY = 1 << 30  # address space a worker may add to what it holds after its imports
MAX_FRAME = 512 << 20  # a frame larger than this is a broken worker, not a render
_HEADER = struct.Struct(">I")


class RenderJob(msgspec.Struct, kw_only=True, tag=True):
    """One render for a worker: ``chat`` (a message list through a Go or Jinja template, as
    ``plan._Renderer`` renders it), ``fim`` (a Go template's prompt/suffix) or ``validate`` (a Go
    template's test renders at create)."""

    kind: str
    go: str | None = None
    jinja: str | None = None
    bos: str = ""
    eos: str = ""
    think: bool | str | None = None
    think_on: bool = False
    thinks: bool = False
    messages: list[Message] = msgspec.field(default_factory=list)
    tools: list[Tool] = msgspec.field(default_factory=list)
    prompt: str = ""
    suffix: str = ""


class RenderReply(msgspec.Struct, kw_only=True):
    text: str = ""
    error: str = ""  # a TemplateError's message ("" when the render succeeded)


_encode = msgspec.msgpack.Encoder().encode
_decode_job = msgspec.msgpack.Decoder(RenderJob).decode
_decode_reply = msgspec.msgpack.Decoder(RenderReply).decode


def frame(msg: msgspec.Struct) -> bytes:
    body = _encode(msg)
    return _HEADER.pack(len(body)) + body


class _Worker:
    """One render worker process and its pipes."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "corral.prompts.renderworker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        self.stdin.close()
        self.stdout.close()

    def _read(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        fd = self.stdout.fileno()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def call(self, job: RenderJob, seconds: float) -> RenderReply:
        self.stdin.write(frame(job))
        self.stdin.flush()
        deadline = time.monotonic() + seconds
        (n,) = _HEADER.unpack(self._read(_HEADER.size, deadline))
        if n > MAX_FRAME:
            raise EOFError
        return _decode_reply(self._read(n, deadline))


class RenderPool:
    """At most ``size`` workers, started when first needed; a worker that fails is replaced."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._count = 0

    def _take(self) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            start = self._count < self.size
            if start:
                self._count += 1
        if start:
            try:
                worker = _Worker()
            except OSError as exc:
                with self._lock:
                    self._count -= 1
                raise TemplateError(f"cannot start a template render worker: {exc}") from None
            # The rest start now, in the background: a worker takes a few hundred milliseconds to start
            # and import, which the first burst of concurrent requests would otherwise wait for.
            threading.Thread(target=self._start_rest, daemon=True, name="render-pool-start").start()
            return worker
        return self._idle.get()  # every worker is busy: wait for one (renders are time-bounded)

    def _start_rest(self) -> None:
        while True:
            with self._lock:
                if self._count >= self.size:
                    return
                self._count += 1
            try:
                worker = _Worker()
            except OSError as exc:
                with self._lock:
                    self._count -= 1
                log.warning("cannot start a template render worker: %s", exc)
                return
            self._idle.put(worker)

    def _drop(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._count -= 1

    def run(self, job: RenderJob, renders: int = 1) -> str:
        """The rendered text, or TemplateError (the worker's own, or a time or memory limit here)."""
        worker = self._take()
        try:
            reply = worker.call(job, renders * TIME_LIMIT_S + GRACE_S)
        except TimeoutError:
            self._drop(worker)
            raise TemplateError(f"template took longer than {TIME_LIMIT_S:g} s to render") from None
        except (EOFError, OSError, ValueError, msgspec.DecodeError):
            code = worker.proc.poll()
            self._drop(worker)
            log.warning("template render worker pid %s stopped (exit status %s)", worker.proc.pid, code)
            raise TemplateError("template rendering ran out of memory or crashed (the template or its "
                                "input is too large)") from None
        except BaseException:
            self._drop(worker)  # interrupted mid-conversation: its pipes are in an unknown state
            raise
        self._idle.put(worker)
        if reply.error:
            raise TemplateError(reply.error)
        return reply.text

    def idle(self) -> int:
        """How many workers are started and waiting for a render."""
        return self._idle.qsize()

    def close(self) -> None:
        """Stop the idle workers (busy ones stop when their caller drops them)."""
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            self._drop(worker)


_pool: RenderPool | None = None
_pool_lock = threading.Lock()


def pool() -> RenderPool:
    """The process-wide pool (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = RenderPool()
        return _pool


def render(job: RenderJob, renders: int = 1) -> str:
    """``job`` rendered by a worker process (blocking; never call it on an event loop)."""
    return pool().run(job, renders)


def validate_go(source: str) -> None:
    """A Modelfile TEMPLATE's test renders (``gotemplate.validate``), in a worker."""
    render(RenderJob(kind="validate", go=source), renders=VALIDATE_RENDERS)


def in_worker(job: RenderJob, handler: Any) -> RenderReply:
    """The worker side: ``handler(job)`` as a reply, its TemplateError as the reply's error."""
    try:
        return RenderReply(text=handler(job))
    except TemplateError as exc:
        return RenderReply(error=exc.message)
    except MemoryError:
        return RenderReply(error="template uses too much memory to render")
    except RecursionError:
        return RenderReply(error="template recursion is too deep")
