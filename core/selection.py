"""Probe every backend plugin, choose one, and call per-model hooks on that one only."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from corral.errors import BackendError, CorralError
from corral.plugins import plugin_distribution
from corral.types import BackendInfo

if TYPE_CHECKING:
    import pluggy

    from corral.config import Config
    from corral.types import (
        CancelToken,
        EmbeddingResult,
        GenerationRequest,
        LoadOptions,
        ModelHandle,
        TokenEvent,
    )

log = logging.getLogger("corral.selection")


def probe_backends(pm: pluggy.PluginManager, config: Config) -> list[BackendInfo]:
    """Ask each plugin about itself; a probe that raises becomes an unusable row, never a crash."""
    infos: list[BackendInfo] = []
    for impl in pm.hook.corral_probe_backend.get_hookimpls():
        name = pm.get_name(impl.plugin) or "?"
        dist, version = plugin_distribution(pm, name)
        try:
            info = impl.function(**{a: {"config": config}[a] for a in impl.argnames})
        except Exception as exc:
            log.warning("backend probe of %s failed: %s", name, exc)
            info = BackendInfo(name=name, priority=0, usable=False,
                               reason=f"probe failed: {type(exc).__name__}: {exc}")
        if info is None:
            continue
        if not info.plugin:
            info.plugin, info.version = dist, info.version or version
        # A plugin registered by module path (CORRAL_EXTRA_PLUGINS) reports a shorter backend name.
        pm.corral_backend_plugins = getattr(pm, "corral_backend_plugins", {})  # type: ignore[attr-defined]
        pm.corral_backend_plugins[info.name] = impl.plugin  # type: ignore[attr-defined]
        infos.append(info)
    infos.extend(getattr(pm, "corral_failures", []))
    return sorted(infos, key=lambda i: (-i.priority, i.name))


def select_backend(
    pm: pluggy.PluginManager, config: Config, requested: str | None = None
) -> tuple[str, list[BackendInfo]]:
    """(chosen name, all candidates). ``requested`` beats ``config.backend`` beats priority."""
    candidates = probe_backends(pm, config)
    want = requested or config.backend
    name = pm.hook.corral_select_backend(candidates=candidates, requested=want)
    return name, candidates


class BackendHooks:
    """Per-model operations routed to exactly one backend plugin.

    Other backends' implementations are left out of every call (pytest's FSHookProxy idea), so a
    backend never has to ask "is this handle mine?". Non-backend plugins still see the calls and
    may wrap them.
    """

    def __init__(self, pm: pluggy.PluginManager, backend: str) -> None:
        self.pm = pm
        self.backend = backend
        plugin = pm.get_plugin(backend) or getattr(pm, "corral_backend_plugins", {}).get(backend)
        if plugin is None:
            raise BackendError(f"backend plugin {backend!r} is not registered")
        others = [
            impl.plugin
            for impl in pm.hook.corral_probe_backend.get_hookimpls()
            if impl.plugin is not plugin
        ]
        self._callers: dict[str, Any] = {
            hook: pm.subset_hook_caller(hook, remove_plugins=others)
            for hook in ("corral_load_model", "corral_tokenize", "corral_detokenize",
                         "corral_generate", "corral_embed", "corral_unload")
        }

    def _call(self, hook: str, **kwargs: Any) -> Any:
        try:
            result = self._callers[hook](**kwargs)
        except CorralError:
            raise
        except Exception as exc:  # a plugin bug: say which plugin, keep the server alive
            log.exception("backend %s raised in %s", self.backend, hook)
            raise BackendError(
                f"backend {self.backend!r} failed in {hook}: {type(exc).__name__}: {exc}"
            ) from exc
        if result is None and hook != "corral_unload":
            raise BackendError(f"backend {self.backend!r} does not implement {hook}")
        return result

    def load_model(self, path: str, options: LoadOptions,
                   progress: Callable[[float], bool] | None = None) -> ModelHandle:
        return self._call("corral_load_model", path=path, options=options, progress=progress)

    def tokenize(self, handle: ModelHandle, text: str, *, add_special: bool = True,
                 parse_special: bool = True) -> list[int]:
        return self._call("corral_tokenize", handle=handle, text=text, add_special=add_special,
                          parse_special=parse_special)

    def detokenize(self, handle: ModelHandle, tokens: list[int], *, render_special: bool = False) -> str:
        return self._call("corral_detokenize", handle=handle, tokens=tokens, render_special=render_special)

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

    def embed(
        self, handle: ModelHandle, inputs: list[list[int]], *, normalize: bool = True
    ) -> EmbeddingResult:
        return self._call("corral_embed", handle=handle, inputs=inputs, normalize=normalize)

    def unload(self, handle: ModelHandle) -> None:
        self._call("corral_unload", handle=handle)
