"""The server's side of a runner subprocess: spawn, talk over a socketpair, reap, report crashes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

import msgspec

from corral.config import Config
from corral.errors import BackendError, CorralError, ModelLoadError, RunnerStoppedError
from corral.runner import protocol as p
from corral.runner.base import RUNNER_STOPPED, Runner, runner_stopped
from corral.spec import ModelSpec
from corral.types import (
    EmbeddingResult,
    GenerationRequest,
    LoadOptions,
    MemoryEstimate,
    ModelHandle,
    RerankResult,
    TokenEvent,
)

log = logging.getLogger("corral.runner")
T = TypeVar("T")


def runner_env(config: Config) -> dict[str, str]:
    """This process's environment with every corral setting replaced by ``config``'s.

    Other variables (PATH, a plugin's own settings) pass through unchanged.
    """
    env = dict(os.environ)
    env.update(config.to_env())
    if config.load_plugins is None:  # "all plugins" is the variable's absence
        env.pop("CORRAL_LOAD_PLUGINS", None)
    return env


class ProcessRunner(Runner):
    """A runner in a subprocess (``python -m corral.runner``): a crash there is an error here, not a crash.

    ``explain``, if given, is asked (on a thread, briefly) why the runner of a loaded model stopped
    unexpectedly; its sentence replaces the generic message in the errors of the stopped requests.
    """

    def __init__(self, config: Config, *, backend: str | None = None, start_timeout: float = 300.0,
                 explain: Callable[[ModelHandle], str | None] | None = None) -> None:
        super().__init__()
        self.config = config
        self.requested_backend = backend
        self.start_timeout = start_timeout
        self._explain = explain
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[p.Ready] | None = None
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._progress: dict[int, Callable[[float], None]] = {}  # load request id -> its watcher
        self._streams: dict[int, asyncio.Queue[list[TokenEvent] | BaseException]] = {}
        self._ids = itertools.count(1)
        self._progress_at: dict[int, float] = {}  # load request id -> when it last made progress
        self._alive = False
        self._closing = False
        self.returncode: int | None = None

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        ours, theirs = socket.socketpair()
        args = [sys.executable, "-m", "corral.runner", "--fd", str(theirs.fileno())]
        if self.requested_backend:
            args += ["--backend", self.requested_backend]
        try:
            # stderr is inherited: the runner's logs land in the server's log.
            self._proc = await asyncio.create_subprocess_exec(
                *args, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                env=runner_env(self.config))
        except OSError as exc:
            ours.close()
            raise BackendError(f"could not start a model runner: {exc}") from exc
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._alive = True
        self._ready = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read_loop(reader), name=f"runner-{self.pid}")
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), self.start_timeout)
        except TimeoutError:
            await self.close()
            raise BackendError(f"model runner did not start within {self.start_timeout:.0f} s") from None
        except BaseException:
            await self.close()
            raise
        if ready.error:
            await self.close()
            raise p.error_from(ready.error_kind, ready.error)
        self.backend = ready.backend
        self.devices = list(ready.devices)
        log.info("runner pid %s started with backend %s", self.pid, self.backend)

    async def close(self, timeout: float = 10.0) -> None:
        """Close the channel (the runner unloads and exits), then reap it; kill it if it lingers."""
        self._closing = True
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("runner pid %s did not exit in %.0f s; killing it", proc.pid, timeout)
                proc.kill()
                await proc.wait()
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)
        self._alive = False

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        why = "connection closed"
        try:
            while True:
                header = await reader.readexactly(p.HEADER.size)
                body = await reader.readexactly(p.frame_length(header))
                self._dispatch(p.from_runner_decoder.decode(body))
        except asyncio.IncompleteReadError:
            pass
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            log.error("runner pid %s: bad channel: %s", self.pid, why)
        finally:
            self._alive = False
            if self._writer is not None and not self._writer.is_closing():
                self._writer.close()
            self._fail_all(runner_stopped(await self._cause()))
            await self._reap(why)
            self._notify_stopped()

    async def _cause(self) -> str | None:
        """The backend's explanation of an unexpected stop of a loaded model's runner, if any."""
        if self._closing or self._explain is None or self.handle is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._explain, self.handle), 5.0)
        except Exception as exc:  # an explanation is a courtesy: never let it hide the stop itself
            log.warning("could not explain why runner pid %s stopped: %s", self.pid, exc)
            return None

    def _fail_all(self, message: str = RUNNER_STOPPED) -> None:
        err = RunnerStoppedError(message)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(err)
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(RunnerStoppedError(message))
        self._calls.clear()
        for q in self._streams.values():
            q.put_nowait(RunnerStoppedError(message))

    async def _reap(self, why: str) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5.0 if self._closing else 2.0)
            except TimeoutError:
                proc.kill()  # channel gone but process alive: it can no longer serve anyone
                await proc.wait()
        self.returncode = proc.returncode
        if self._closing:
            log.info("runner pid %s stopped (exit status %s)", proc.pid, proc.returncode)
        else:
            rc = proc.returncode
            how = f"signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
            log.error("runner pid %s stopped unexpectedly (%s, %s)", proc.pid, how, why)

    def _dispatch(self, msg: p.FromRunner) -> None:
        if isinstance(msg, p.Events):
            q = self._streams.get(msg.id)
            if q is not None:
                q.put_nowait(msg.events)
        elif isinstance(msg, p.Result):
            fut = self._calls.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg.value)
        elif isinstance(msg, p.LoadProgress):
            if msg.id in self._progress_at:
                self._progress_at[msg.id] = time.monotonic()  # the stall timer (CORRAL_LOAD_TIMEOUT) restarts
            watcher = self._progress.get(msg.id)
            if watcher is not None:
                try:
                    watcher(msg.fraction)
                except Exception:  # a broken watcher must not break the channel
                    log.exception("load progress watcher failed")
        elif isinstance(msg, p.Failure):
            err = p.error_from(msg.kind, msg.message)
            fut = self._calls.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_exception(err)
            q = self._streams.get(msg.id)
            if q is not None:
                q.put_nowait(err)
        elif isinstance(msg, p.Ready):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(msg)

    # ---- requests -------------------------------------------------------------------------------
    def _send(self, msg: msgspec.Struct) -> None:
        if not self._alive or self._writer is None or self._writer.is_closing():
            raise RunnerStoppedError(RUNNER_STOPPED)
        self._writer.write(p.encode(msg))

    async def _call(self, msg: p.Request, result_type: type[T]) -> T:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[msg.id] = fut
        try:
            self._send(msg)
        except CorralError:
            self._calls.pop(msg.id, None)
            raise
        try:
            value = await fut
        except asyncio.CancelledError:
            # The caller gave up (its client left): a request that checks for cancels stops at once.
            self._calls.pop(msg.id, None)
            if self._alive:
                with contextlib.suppress(CorralError):
                    self._send(p.Cancel(target=msg.id))
            raise
        return msgspec.convert(value, result_type)

    async def estimate(self, spec: ModelSpec, options: LoadOptions) -> MemoryEstimate | None:
        msg = p.Estimate(id=next(self._ids), model=spec, options=options)
        value = await self._call(msg, object)  # None or the estimate's fields
        return None if value is None else msgspec.convert(value, MemoryEstimate)

    async def load(self, spec: ModelSpec, options: LoadOptions, memory_limits: dict[str, int] | None = None,
                   progress: Callable[[float], None] | None = None) -> ModelHandle:
        """Load, failing (and stopping the runner) if the load makes no progress for
        ``config.load_timeout`` seconds (CORRAL_LOAD_TIMEOUT, as Ollama's OLLAMA_LOAD_TIMEOUT)."""
        msg = p.Load(id=next(self._ids), model=spec, options=options, memory_limits=memory_limits)
        stall = self.config.load_timeout
        self._progress_at[msg.id] = time.monotonic()
        if progress is not None:
            self._progress[msg.id] = progress
        call = asyncio.ensure_future(self._call(msg, ModelHandle))
        try:
            while True:
                left = self._progress_at[msg.id] + stall - time.monotonic()
                if left <= 0:
                    raise ModelLoadError(f"timed out loading the model: no progress for {stall:.0f} s "
                                         "(CORRAL_LOAD_TIMEOUT)")
                done, _ = await asyncio.wait({call}, timeout=None if stall == float("inf") else left)
                if done:
                    self.handle = call.result()
                    return self.handle
        except BaseException:
            if not call.done():
                call.cancel()
                await self.close(timeout=1.0)  # a stalled native load cannot be interrupted: stop it
            raise
        finally:
            self._progress_at.pop(msg.id, None)
            self._progress.pop(msg.id, None)

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        msg = p.Tokenize(id=next(self._ids), text=text, add_special=add_special, parse_special=parse_special)
        return await self._call(msg, list[int])

    async def detokenize(self, tokens: list[int], *, render_special: bool = False) -> str:
        msg = p.Detokenize(id=next(self._ids), tokens=tokens, render_special=render_special)
        return await self._call(msg, str)

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        return await self._call(p.Pieces(id=next(self._ids), tokens=tokens), list[bytes])

    async def embed(self, inputs: list[list[int]], *, normalize: bool = True) -> EmbeddingResult:
        msg = p.Embed(id=next(self._ids), inputs=inputs, normalize=normalize)
        return await self._call(msg, EmbeddingResult)

    async def rerank(self, query: str, documents: list[str]) -> RerankResult:
        msg = p.Rerank(id=next(self._ids), query=query, documents=documents)
        return await self._call(msg, RerankResult)

    async def quantize(self, source: str, destination: str, file_type: str) -> None:
        msg = p.Quantize(id=next(self._ids), source=source, destination=destination, file_type=file_type)
        await self._call(msg, bool)

    async def unload(self) -> None:
        await self._call(p.Unload(id=next(self._ids)), bool)
        self.handle = None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        rid = next(self._ids)
        q: asyncio.Queue[list[TokenEvent] | BaseException] = asyncio.Queue()
        self._streams[rid] = q
        finished = False
        try:
            self._send(p.Generate(id=rid, request=request))
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                for event in item:
                    if event.finish_reason is not None:
                        finished = True
                    yield event
                    if finished:
                        return
        finally:
            self._streams.pop(rid, None)
            if not finished and self._alive:
                # The consumer went away (client disconnect): stop the sequence now, free its slot.
                try:
                    self._send(p.Cancel(target=rid))
                except CorralError:
                    pass
