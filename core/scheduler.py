"""Which models are loaded: load on demand within each device's memory, keep-alive expiry, LRU
eviction, reloads, queue limit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

from corral.config import Config
from corral.errors import InsufficientMemoryError, InvalidRequestError, ServerBusyError
from corral.memory import MIN_DEFAULT_CONTEXT, Held, default_context, fmt, plan, scaled
from corral.options import cap_context
from corral.runner import Runner, RunnerFactory
from corral.slotpool import SlotPool
from corral.spec import ModelDetails, ModelSpec
from corral.types import HOST, LoadOptions, MemoryEstimate, ModelHandle

log = logging.getLogger("corral.scheduler")

BUSY = "server busy, please try again.  maximum pending requests exceeded"  # compat(ollama): two spaces
CLOSING = "server is shutting down and accepts no new requests; please try again shortly"
# What /api/ps shows for "forever" (Ollama stores the largest duration it has: about 292 years).
FOREVER = timedelta(seconds=(2**63 - 1) / 1e9)


class RunningModel(msgspec.Struct, kw_only=True):
    """One row of /api/ps."""

    name: str
    model: str
    digest: str
    size: int
    size_vram: int
    details: ModelDetails
    expires_at: datetime
    context_length: int
    backend: str = ""
    pid: int | None = None


class _LoadedModel:
    """A model in a runner, with its reference count, slots, expiry timer and the memory it holds."""

    def __init__(self, spec: ModelSpec, options: LoadOptions, runner: Runner, handle: ModelHandle,
                 keep_alive: float, load_ns: int) -> None:
        self.spec = spec  # as the request that loaded it resolved it (its digest is the key)
        self.options = options  # as requested (num_ctx 0: chosen by memory); handle.options as loaded
        self.runner = runner
        self.handle = handle
        self.keep_alive = keep_alive
        self.load_ns = load_ns
        self.refs = 0
        self.slots = SlotPool(handle.info.n_parallel or options.num_parallel)
        self.idle = asyncio.Event()
        self.idle.set()
        self.timer: asyncio.TimerHandle | None = None
        self.expires_at: float | None = None  # wall-clock seconds; None while in use or forever
        self.last_used = time.monotonic()
        self.gone = False  # unloaded or crashed: never hand out again

    @property
    def key(self) -> str:
        return self.spec.digest

    @property
    def name(self) -> str:
        return self.spec.display

    @property
    def usable(self) -> bool:
        return not self.gone and self.runner.alive

    @property
    def usage(self) -> dict[str, int]:
        """Bytes this model holds on each device, as its backend measured them after loading."""
        memory = self.handle.memory
        if memory.devices:
            return {d.device: d.used for d in memory.devices}
        return {HOST: max(0, memory.total - memory.vram)} if memory.total else {}

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.expires_at = None


class Lease:
    """A request's hold on a loaded model and one of its parallel slots. Release exactly once."""

    def __init__(self, scheduler: Scheduler, loaded: _LoadedModel, load_duration_ns: int,
                 spare: bool = False) -> None:
        self._scheduler = scheduler
        self._spare = spare  # holds the model's spare slot for short requests
        self._loaded = loaded
        self.runner: Runner = loaded.runner
        self.handle: ModelHandle = loaded.handle
        self.load_duration_ns = load_duration_ns  # request start until a slot was ours (Ollama's meaning)
        self._released = False

    def release(self) -> None:
        """Give the slot back. Synchronous so it is safe in a ``finally`` of a closing async generator."""
        if self._released:
            return
        self._released = True
        self._scheduler._release(self._loaded, spare=self._spare)


class Scheduler:
    """Owns every runner. All methods run on one event loop.

    A loaded model is identified by its spec's digest and its load options: a request for the same
    digest with other load options reloads it (unloading the old copy first).
    """

    def __init__(self, config: Config, runner_factory: RunnerFactory) -> None:
        self.config = config
        self.runner_factory = runner_factory
        self._models: dict[str, _LoadedModel] = {}  # by ModelSpec.digest
        self._load_lock = asyncio.Lock()  # one load (and its evictions) at a time, as Ollama does
        self._pending = 0
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # digest -> the load-progress watchers of the requests waiting for that model
        self._watchers: dict[str, set[Callable[[float], None]]] = {}
        # Memory estimates by (digest, options as loaded); a loaded model's measured use replaces its own.
        self._estimates: OrderedDict[tuple[str, LoadOptions], MemoryEstimate] = OrderedDict()

    # ---- acquiring ------------------------------------------------------------------------------
    async def acquire(self, spec: ModelSpec, load_options: LoadOptions, keep_alive: float | None = None,
                      progress: Callable[[float], None] | None = None, short: bool = False) -> Lease:
        """A lease on ``spec``'s model loaded with ``load_options``; loads or reloads it if needed.

        ``progress`` is called with the fraction loaded while that model loads, whichever request
        started the load. A ``short`` request (``GenerationRequest.short``) may take the model's spare
        slot when the others are busy."""
        start = time.monotonic_ns()
        key = spec.digest
        if spec.files.model is None:
            raise InvalidRequestError(f"{spec.display!r} has no model weights to load")
        if self._closing:
            raise ServerBusyError(CLOSING)
        if self._pending >= self.config.max_queue:
            raise ServerBusyError(BUSY)
        keep = self.config.keep_alive if keep_alive is None else keep_alive
        self._pending += 1
        if progress is not None:
            self._watchers.setdefault(key, set()).add(progress)
        try:
            while True:
                m = self._models.get(key)
                if m is not None and m.usable and m.options == load_options:
                    m.keep_alive = keep
                    m.refs += 1  # counted before waiting so eviction sees the model as wanted
                    m.stop_timer()
                    m.idle.clear()
                    try:
                        spare = await m.slots.acquire(short)
                    except BaseException:
                        self._release(m, slot=False)
                        raise
                    if not m.usable:  # crashed while we waited for a slot
                        self._release(m, spare=spare)
                        continue
                    m.last_used = time.monotonic()
                    return Lease(self, m, time.monotonic_ns() - start, spare)
                async with self._load_lock:
                    if self._closing:
                        raise ServerBusyError(CLOSING)
                    m = self._models.get(key)
                    if m is not None and m.usable and m.options == load_options:
                        continue
                    if m is not None:
                        if m.usable:
                            log.info("reloading %s: load options changed", m.name)
                        await self._evict(m)
                    await self._make_room()
                    await self._load(spec, load_options, keep)
        finally:
            self._pending -= 1
            if progress is not None:
                watchers = self._watchers.get(key, set())
                watchers.discard(progress)
                if not watchers:
                    self._watchers.pop(key, None)

    def _report(self, key: str, fraction: float) -> None:
        for watcher in list(self._watchers.get(key, ())):
            try:
                watcher(fraction)
            except Exception:  # one request's broken watcher must not fail the load for all
                log.exception("load progress watcher failed")

    async def _load(self, spec: ModelSpec, requested: LoadOptions, keep: float) -> None:
        t0 = time.monotonic_ns()
        runner = self.runner_factory()
        try:
            await runner.start()
            options, limits = await self._place(runner, spec, requested)
            handle = await runner.load(spec, options, limits, progress=lambda f: self._report(spec.digest, f))
        except BaseException:
            await _quietly(runner.close())
            raise
        m = _LoadedModel(spec, requested, runner, handle, keep, time.monotonic_ns() - t0)
        runner.add_stopped_callback(lambda r: self._on_stopped(m))
        self._models[m.key] = m
        # What it really took is the best estimate of any later load of the same model and options.
        if handle.memory.devices:
            self._remember(spec, options, MemoryEstimate(devices=handle.memory.devices))
        held = ", ".join(f"{d} {fmt(n)}" for d, n in m.usage.items()) or "memory not reported"
        log.info("loaded %s on %s (pid %s) in %.2f s: %s", m.name, runner.backend, runner.pid,
                 m.load_ns / 1e9, held)

    # ---- memory ---------------------------------------------------------------------------------
    async def _estimate(self, runner: Runner, spec: ModelSpec, options: LoadOptions) -> MemoryEstimate | None:
        key = (spec.digest, options)
        known = self._estimates.get(key)
        if known is not None:
            self._estimates.move_to_end(key)
            return known
        estimate = await runner.estimate(spec, options)
        if estimate is not None:
            self._remember(spec, options, estimate)
        return estimate

    def _remember(self, spec: ModelSpec, options: LoadOptions, estimate: MemoryEstimate) -> None:
        self._estimates[(spec.digest, options)] = estimate
        while len(self._estimates) > 64:
            self._estimates.popitem(last=False)

    def _held(self) -> list[Held]:
        return [Held(m.name, m.usage, m.refs == 0, m.last_used) for m in self._models.values() if not m.gone]

    async def _place(self, runner: Runner, spec: ModelSpec,
                     requested: LoadOptions) -> tuple[LoadOptions, dict[str, int] | None]:
        """The options to load with (a default num_ctx chosen) and what the model may take on each
        device, once idle models have been unloaded to make room; waits for busy ones that must go.
        Raises ``InsufficientMemoryError`` for a model that cannot fit even alone."""
        options, auto = requested, requested.num_ctx == 0
        n_train = spec.gguf.context_length
        if auto:
            ctx = cap_context(default_context(runner.devices, self.config), n_train)
            options = msgspec.structs.replace(requested, num_ctx=ctx)
        estimate = await self._estimate(runner, spec, options)
        if estimate is None:  # the backend cannot tell: the count of loaded models is the only rule
            return options, None
        if auto:
            # Ollama's tier is a ceiling: step down (halving, not below 4096) until the model fits in
            # what is free beside the loaded models, so a default never evicts anything by itself.
            floor, ctx = cap_context(MIN_DEFAULT_CONTEXT, n_train), options.num_ctx
            held = self._held()
            while ctx > floor and not plan(scaled(estimate, options.num_ctx, ctx), held, options,
                                           self.config).fits:
                ctx = max(floor, ctx // 2)
            if ctx != options.num_ctx:
                log.info("default context for %s lowered to %d to fit memory", spec.display, ctx)
                options = msgspec.structs.replace(options, num_ctx=ctx)
                estimate = await self._estimate(runner, spec, options) or estimate
        freed: dict[str, int] = {}
        while True:
            fit = plan(estimate, self._held(), options, self.config, freed)
            if fit.never:
                raise InsufficientMemoryError(f"cannot load {spec.display}: {fit.never}")
            if fit.fits:
                return options, fit.limits
            holders = [m for m in self._models.values()
                       if not m.gone and any(m.usage.get(d, 0) > 0 for d in fit.short)]
            idle = [m for m in holders if m.refs == 0]
            if idle:
                victim = min(idle, key=lambda m: m.last_used)
                log.info("unloading %s to make room for %s (%s)", victim.name, spec.display,
                         ", ".join(f"{fmt(n)} short on {d}" for d, n in fit.short.items()))
                for d, n in victim.usage.items():
                    freed[d] = freed.get(d, 0) + n
                await self._unload(victim)
                continue
            if holders:  # every model in the way is busy: wait for one to finish (as Ollama does)
                log.info("%s waits for %s to finish to make room", spec.display,
                         ", ".join(m.name for m in holders))
                waits = [asyncio.ensure_future(m.idle.wait()) for m in holders]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                continue
            # What is missing is held by other programs: layers may still stay on the host.
            if HOST not in fit.short and options.num_gpu == -1 and not options.tensor_split:
                return options, fit.limits
            where = ", ".join(f"{fmt(n)} more on {d}" for d, n in fit.short.items())
            raise InsufficientMemoryError(f"cannot load {spec.display} now: model requires {where} than is "
                                          "available (other programs hold that memory)")

    async def _make_room(self) -> None:
        while len(self._models) >= self.config.max_loaded_models:
            models = list(self._models.values())
            idle = [m for m in models if m.refs == 0]
            victim = min(idle or models, key=lambda m: m.last_used)  # least recently used; idle first
            log.info("unloading %s to make room (max %d loaded)", victim.name, self.config.max_loaded_models)
            await self._evict(victim)

    async def _evict(self, m: _LoadedModel) -> None:
        """Wait until nobody uses ``m``, then unload it."""
        await m.idle.wait()
        await self._unload(m)

    # ---- releasing and expiry -------------------------------------------------------------------
    def _release(self, m: _LoadedModel, *, slot: bool = True, spare: bool = False) -> None:
        if slot:
            m.slots.release(spare)
        m.refs -= 1
        m.last_used = time.monotonic()
        if m.refs > 0:
            return
        m.idle.set()
        if m.gone:
            return
        if not m.runner.alive:
            self._spawn(self._unload(m))
        elif m.keep_alive <= 0:
            self._spawn(self._unload(m))
        elif m.keep_alive >= FOREVER.total_seconds():  # inf, or too far for any timer or timestamp
            m.expires_at = None
        else:
            m.expires_at = time.time() + m.keep_alive
            m.timer = asyncio.get_running_loop().call_later(m.keep_alive, self._expire, m)

    def _expire(self, m: _LoadedModel) -> None:
        m.timer = None
        if m.refs == 0 and not m.gone:
            log.info("%s expired after %.0f s idle", m.name, m.keep_alive)
            self._spawn(self._unload(m))

    def _on_stopped(self, m: _LoadedModel) -> None:
        """A runner stopped (crash or close): forget the model so the next request loads it afresh."""
        if not m.gone:
            log.warning("runner for %s stopped; it will be reloaded on the next request", m.name)
        m.gone = True
        m.stop_timer()
        if self._models.get(m.key) is m:
            del self._models[m.key]

    async def _unload(self, m: _LoadedModel) -> None:
        m.gone = True
        m.stop_timer()
        if self._models.get(m.key) is m:
            del self._models[m.key]
        await _quietly(m.runner.close())
        log.info("unloaded %s", m.name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- public controls ------------------------------------------------------------------------
    async def unload(self, spec: ModelSpec) -> bool:
        """Unload a model now if idle, or as soon as its current requests finish. False if not loaded."""
        m = self._models.get(spec.digest)
        if m is None:
            return False
        m.keep_alive = 0
        if m.refs == 0:
            await self._unload(m)
        return True

    def running(self) -> list[RunningModel]:
        """Rows for /api/ps, the longest remaining time first."""
        rows = []
        now = datetime.now(timezone.utc)
        for m in list(self._models.values()):
            if not m.usable:
                continue
            if m.expires_at is not None:
                expires = datetime.fromtimestamp(m.expires_at, timezone.utc)
            elif m.keep_alive >= FOREVER.total_seconds():
                expires = now + FOREVER
            else:  # in use: Ollama shows now + keep_alive
                expires = now + timedelta(seconds=m.keep_alive)
            info = m.handle.info
            details = m.spec.details
            if not details.quantization_level:  # the config blob did not say: the loaded file does
                details = msgspec.structs.replace(details, quantization_level=info.file_type)
            rows.append(RunningModel(
                name=m.name, model=m.name, digest=m.spec.digest,
                size=m.handle.memory.total or info.size, size_vram=m.handle.memory.vram,
                details=details, expires_at=expires,
                context_length=info.n_ctx, backend=m.runner.backend, pid=m.runner.pid))
        rows.sort(key=lambda r: r.expires_at, reverse=True)
        return rows

    @property
    def pending(self) -> int:
        """Requests waiting for a load or a slot (the queue depth /metrics reports)."""
        return self._pending

    async def shutdown(self, drain_timeout: float = 30.0) -> None:
        """Refuse new requests, let in-flight ones finish (up to ``drain_timeout``), stop every runner."""
        self._closing = True
        models = list(self._models.values())
        waits = [asyncio.create_task(m.idle.wait()) for m in models]
        if waits:
            _done, late = await asyncio.wait(waits, timeout=drain_timeout)
            for t in late:
                t.cancel()
            if late:
                log.warning("shutdown: %d model(s) still busy after %.0f s; stopping them", len(late),
                            drain_timeout)
        await asyncio.gather(*(self._unload(m) for m in models), return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _quietly(coro: Coroutine[Any, Any, None]) -> None:
    try:
        await coro
    except Exception:
        log.exception("closing a runner failed")
