"""An in-process runner with the subprocess runner's interface, for fast tests (no isolation)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from corral.errors import BackendError, RunnerStoppedError
from corral.plugins import PluginHost, load_plugins
from corral.runner.base import RUNNER_STOPPED, Runner, model_file
from corral.selection import BackendHooks, select_backend
from corral.spec import ModelSpec
from corral.types import (
    CancelToken,
    EmbeddingResult,
    GenerationRequest,
    LoadOptions,
    MemoryEstimate,
    ModelHandle,
    RerankResult,
    TokenEvent,
)

if TYPE_CHECKING:

    from corral.config import Config

_DONE = object()


class LocalRunner(Runner):
    """Calls the backend hooks on worker threads of this process. Production uses ``ProcessRunner``."""

    def __init__(self, config: Config, *, host: PluginHost | None = None,
                 backend: str | None = None) -> None:
        super().__init__()
        self.config = config
        self._host = host
        self.requested_backend = backend
        self._backend_hooks: BackendHooks | None = None
        self._alive = False
        self._cancels: set[CancelToken] = set()

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def _hooks(self) -> BackendHooks:
        if self._backend_hooks is None:
            raise BackendError("this runner has not been started")
        return self._backend_hooks

    async def start(self) -> None:
        def setup() -> BackendHooks:
            host = self._host or load_plugins(self.config)
            name, infos = select_backend(host, self.config, self.requested_backend, probe_all=False)
            self.devices = next((list(i.devices) for i in infos if i.name == name), [])
            return BackendHooks(host, name)

        self._backend_hooks = await asyncio.to_thread(setup)
        self.backend = self._backend_hooks.backend
        self._alive = True

    def _loaded(self) -> ModelHandle:
        if not self._alive:
            raise RunnerStoppedError(RUNNER_STOPPED)
        if self.handle is None:
            raise BackendError("no model is loaded in this runner")
        return self.handle

    async def estimate(self, spec: ModelSpec, options: LoadOptions) -> MemoryEstimate | None:
        return await asyncio.to_thread(self._hooks.estimate_memory, model_file(spec), options)

    async def load(self, spec: ModelSpec, options: LoadOptions, memory_limits: dict[str, int] | None = None,
                   progress: Callable[[float], None] | None = None) -> ModelHandle:
        if self.handle is not None:
            raise BackendError("this runner already has a model loaded")
        report: Callable[[float], bool] | None = None
        if progress is not None:
            loop, watcher = asyncio.get_running_loop(), progress

            def to_loop(fraction: float) -> bool:  # called on the load's thread
                try:
                    loop.call_soon_threadsafe(watcher, fraction)
                except RuntimeError:  # the loop is gone: nobody is watching any more
                    pass
                return True

            report = to_loop
        self.handle = await asyncio.to_thread(self._hooks.load_model, model_file(spec), options, report,
                                              memory_limits=memory_limits)
        return self.handle

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return await asyncio.to_thread(self._hooks.tokenize, self._loaded(), text, add_special=add_special,
                                       parse_special=parse_special)

    async def detokenize(self, tokens: list[int], *, render_special: bool = False) -> str:
        return await asyncio.to_thread(self._hooks.detokenize, self._loaded(), tokens,
                                       render_special=render_special)

    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        return await asyncio.to_thread(self._hooks.token_pieces, self._loaded(), tokens)

    async def embed(self, inputs: list[list[int]], *, normalize: bool = True) -> EmbeddingResult:
        cancel = CancelToken()
        self._cancels.add(cancel)
        try:
            return await asyncio.shield(asyncio.to_thread(self._hooks.embed, self._loaded(), inputs,
                                                          normalize=normalize, cancel=cancel))
        except asyncio.CancelledError:
            cancel.cancel()  # the thread cannot be interrupted: the backend stops at the next input
            raise
        finally:
            self._cancels.discard(cancel)

    async def rerank(self, query: str, documents: list[str]) -> RerankResult:
        return await asyncio.to_thread(self._hooks.rerank, self._loaded(), query, documents)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        handle = self._loaded()
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = asyncio.Queue()
        cancel = CancelToken()
        self._cancels.add(cancel)

        def post(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the loop is gone (test over): nobody is listening any more
                cancel.cancel()

        def pump() -> None:
            # The backend iterator blocks between tokens, so it lives on its own thread.
            try:
                for event in self._hooks.generate(handle, request, cancel):
                    post(event)
                    if event.finish_reason is not None:
                        break
            except BaseException as exc:
                post(exc)
            finally:
                post(_DONE)

        threading.Thread(target=pump, name="local-runner-generate", daemon=True).start()
        finished = False
        try:
            while True:
                item = await q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            self._cancels.discard(cancel)
            if not finished:
                cancel.cancel()

    async def quantize(self, source: str, destination: str, file_type: str) -> None:
        await asyncio.to_thread(self._hooks.quantize, source, destination, file_type)

    async def unload(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            await asyncio.to_thread(self._hooks.unload, handle)

    async def close(self, timeout: float = 10.0) -> None:
        if not self._alive:
            return
        for token in list(self._cancels):
            token.cancel()
        try:
            await self.unload()
        finally:
            self._alive = False
            self._notify_stopped()
