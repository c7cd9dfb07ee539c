"""Probe every backend plugin, choose one, and call per-model hooks on that one only."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from corral.errors import (
    BackendError,
    BackendUnavailableError,
    CapabilityError,
    CorralError,
    InvalidRequestError,
)
from corral.hookspecs import ON_EVERY_PLUGIN
from corral.plugins import PluginHost
from corral.types import (
    BackendInfo,
    CancelToken,
    EmbeddingResult,
    MemoryEstimate,
    ModelHandle,
    RerankResult,
    WorkerInfo,
)

if TYPE_CHECKING:
    from pluggy import HookCaller

    from corral.config import Config
    from corral.types import GenerationRequest, LoadOptions, TokenEvent

log = logging.getLogger("corral.selection")
T = TypeVar("T")



def probe_backends(host: PluginHost, config: Config, *, only: str | None = None) -> list[BackendInfo]:
    """Ask each backend plugin about itself; a probe that raises becomes an unusable row, never a crash.

    Each plugin is probed through the hook caller (so tracing and ``wrapper`` hooks see the call),
    one plugin at a time so one's failure is its own. With ``only``, just the plugin that may be
    that backend is probed: a runner started for one backend never loads another's driver.
    """
    impls = [i for i in host.pm.hook.corral_probe_backend.get_hookimpls() if not (i.wrapper or i.hookwrapper)]
    plugins = [i.plugin for i in impls]
    infos: list[BackendInfo] = []
    for impl in impls:
        if only is not None and not host.may_be(impl.plugin, only):
            continue
        name = host.pm.get_name(impl.plugin) or "?"
        dist, version = host.distribution(name)
        probe = host.pm.subset_hook_caller("corral_probe_backend",
                                           remove_plugins=[p for p in plugins if p is not impl.plugin])
        try:
            info = next((r for r in probe(config=config) if r is not None), None)
        except Exception as exc:
            log.warning("backend probe of %s failed: %s", name, exc)
            info = BackendInfo(name=name, priority=0, usable=False,
                               reason=f"probe failed: {type(exc).__name__}: {exc}")
        if info is None:
            continue
        if not info.plugin:
            info.plugin, info.version = dist, info.version or version
        host.backends[info.name] = impl.plugin  # a CORRAL_EXTRA_PLUGINS module may report a shorter name
        infos.append(info)
    infos.extend(f for f in host.failures if only is None or f.name == only)
    return sorted(infos, key=lambda i: (-i.priority, i.name))


def select_backend(host: PluginHost, config: Config, requested: str | None = None, *,
                   probe_all: bool = True) -> tuple[str, list[BackendInfo]]:
    """(chosen name, the candidates). ``requested`` beats ``config.backend`` beats priority.

    ``probe_all=False`` with a backend asked for probes that one only (what a runner process does).
    """
    want = requested or config.backend
    candidates = probe_backends(host, config, only=None if probe_all or not want else want)
    name: str = host.pm.hook.corral_select_backend(candidates=candidates, requested=want)
    return name, candidates


def select_worker_backend(host: PluginHost, config: Config, requested: str | None = None) -> str:
    """The backend that runs ``corral worker`` here: ``requested`` if it can, else the usable backend
    of highest priority among those that implement ``corral_start_worker``. Never a silent fallback."""
    candidates = probe_backends(host, config)
    runners = {impl.plugin for impl in host.pm.hook.corral_start_worker.get_hookimpls()}
    able = [c for c in candidates if host.plugin_for(c.name) in runners]
    if requested:
        chosen = next((c for c in candidates if c.name == requested), None)
        if chosen is None:
            raise BackendUnavailableError(f"unknown backend {requested!r}; see 'corral backends'")
        if chosen not in able:
            raise BackendUnavailableError(f"backend {requested!r} cannot run an RPC worker")
        if not chosen.usable:
            raise BackendUnavailableError(f"backend {requested!r} cannot run here: {chosen.reason}")
        return requested
    usable = [c for c in able if c.usable]
    if not usable:
        why = "; ".join(f"{c.name}: {c.reason}" for c in able) or "no backend plugin offers one"
        raise BackendUnavailableError(f"no backend here can run an RPC worker ({why})")
    return usable[0].name


class BackendHooks:
    """Per-model operations routed to exactly one backend plugin.

    Other backends' implementations are left out of every call (pytest's FSHookProxy idea), so a
    backend never has to ask "is this handle mine?". Non-backend plugins still see the calls and
    may wrap them.
    """

    def __init__(self, host: PluginHost, backend: str) -> None:
        self.host = host
        self.backend = backend
        plugin = host.plugin_for(backend)
        if plugin is None:
            raise BackendError(f"backend plugin {backend!r} is not registered")
        others = [impl.plugin for impl in host.pm.hook.corral_probe_backend.get_hookimpls()
                  if impl.plugin is not plugin and not (impl.wrapper or impl.hookwrapper)]
        self._callers: dict[str, HookCaller] = {
            hook: host.pm.subset_hook_caller(hook, remove_plugins=others)
            for hook in dir(host.pm.hook) if hook.startswith("corral_") and hook not in ON_EVERY_PLUGIN}

    def _call(self, hook: str, *, optional: bool = False, **kwargs: Any) -> Any:
        try:
            result = self._callers[hook](**kwargs)
        except CorralError:
            raise
        except Exception as exc:  # a plugin bug: say which plugin, keep the server alive
            log.exception("backend %s raised in %s", self.backend, hook)
            raise BackendError(
                f"backend {self.backend!r} failed in {hook}: {type(exc).__name__}: {exc}"
            ) from exc
        if result is None and not optional:
            raise BackendError(f"backend {self.backend!r} does not implement {hook}")
        return result

    def _typed(self, hook: str, value: object, kind: type[T]) -> T:
        """``value`` if it is a ``kind``: a plugin that answers with something else is a clear error."""
        if not isinstance(value, kind):
            raise BackendError(f"backend {self.backend!r} returned {type(value).__name__} from {hook}, "
                               f"not {kind.__name__}")
        return value

    def estimate_memory(self, path: str, options: LoadOptions) -> MemoryEstimate | None:
        """The backend's estimate of what loading ``path`` takes per device, or None if it cannot tell."""
        value = self._call("corral_estimate_memory", optional=True, path=path, options=options)
        return None if value is None else self._typed("corral_estimate_memory", value, MemoryEstimate)

    def load_model(self, path: str, options: LoadOptions, progress: Callable[[float], bool] | None = None,
                   memory_limits: dict[str, int] | None = None) -> ModelHandle:
        handle = self._call("corral_load_model", path=path, options=options, progress=progress,
                            memory_limits=memory_limits)
        return self._typed("corral_load_model", handle, ModelHandle)

    def tokenize(self, handle: ModelHandle, text: str, *, add_special: bool = True,
                 parse_special: bool = True) -> list[int]:
        tokens = self._call("corral_tokenize", handle=handle, text=text, add_special=add_special,
                            parse_special=parse_special)
        return self._typed("corral_tokenize", tokens, list)

    def detokenize(self, handle: ModelHandle, tokens: list[int], *, render_special: bool = False) -> str:
        text = self._call("corral_detokenize", handle=handle, tokens=tokens, render_special=render_special)
        return self._typed("corral_detokenize", text, str)

    def token_pieces(self, handle: ModelHandle, tokens: list[int]) -> list[bytes]:
        pieces = self._call("corral_token_pieces", optional=True, handle=handle, tokens=tokens)
        if pieces is None:
            raise CapabilityError(f"backend {self.backend!r} cannot give token pieces (with_pieces)")
        pieces = self._typed("corral_token_pieces", pieces, list)
        if len(pieces) != len(tokens) or not all(isinstance(b, bytes) for b in pieces):
            raise BackendError(f"backend {self.backend!r} returned no bytes piece per token from "
                               "corral_token_pieces")
        return pieces

    def generate(self, handle: ModelHandle, request: GenerationRequest,
                 cancel: CancelToken) -> Iterator[TokenEvent]:
        events = self._call("corral_generate", handle=handle, request=request, cancel=cancel)
        try:
            yield from events
        except CorralError:
            raise
        except Exception as exc:
            log.exception("backend %s raised while generating", self.backend)
            raise BackendError(f"backend {self.backend!r} failed while generating: {exc}") from exc

    def embed(self, handle: ModelHandle, inputs: list[list[int]], *, normalize: bool = True,
              cancel: CancelToken | None = None) -> EmbeddingResult:
        result = self._call("corral_embed", handle=handle, inputs=inputs, normalize=normalize,
                            cancel=cancel or CancelToken())
        return self._typed("corral_embed", result, EmbeddingResult)

    def rerank(self, handle: ModelHandle, query: str, documents: list[str]) -> RerankResult:
        result = self._call("corral_rerank", handle=handle, query=query, documents=documents)
        return self._typed("corral_rerank", result, RerankResult)

    def unload(self, handle: ModelHandle) -> None:
        self._call("corral_unload", optional=True, handle=handle)

    def quantize(self, source: str, destination: str, file_type: str,
                 progress: Callable[[float], bool] | None = None) -> None:
        """Quantize with this backend (in the runner process that selected it, like every native call)."""
        done = self._call("corral_quantize", optional=True, source=source, destination=destination,
                          file_type=file_type, progress=progress)
        if not done:
            raise InvalidRequestError(
                f"quantizing to {file_type} is not supported by the {self.backend} backend")

    def explain_stop(self, handle: ModelHandle) -> str | None:
        """The backend's sentence on why ``handle``'s runner stopped, or None; never raises."""
        try:
            why = self._call("corral_explain_stop", optional=True, handle=handle)
        except Exception:
            log.exception("backend %s could not explain a runner stop", self.backend)
            return None
        return why if isinstance(why, str) and why.strip() else None

    def start_worker(self, endpoint: str, *, cache_dir: str | None, threads: int,
                     memory_limit: int) -> WorkerInfo:
        info = self._call("corral_start_worker", endpoint=endpoint, cache_dir=cache_dir, threads=threads,
                          memory_limit=memory_limit)
        return self._typed("corral_start_worker", info, WorkerInfo)
