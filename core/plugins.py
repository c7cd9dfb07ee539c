"""The plugin host: a pluggy manager with hookspecs, core defaults and each plugin loaded on its own."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pluggy

from corral import defaults, hookspecs
from corral.types import BackendInfo

if TYPE_CHECKING:
    from corral.config import Config

log = logging.getLogger("corral.plugins")

ENTRY_POINT_GROUP = hookspecs.PROJECT


class PluginFailure(BackendInfo, kw_only=True):
    """A plugin that could not be imported or registered; shown by `corral backends`."""


@dataclass(eq=False)
class PluginHost:
    """A pluggy manager and what corral knows about its plugins (kept here, never on the manager).

    Build one with ``load_plugins(config)``; no module-global one exists, callers own theirs.
    """

    pm: pluggy.PluginManager
    failures: list[PluginFailure] = field(default_factory=list)  # plugins that failed to load
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (dist, version)
    extra: set[str] = field(default_factory=set)  # names registered from CORRAL_EXTRA_PLUGINS
    backends: dict[str, object] = field(default_factory=dict)  # backend name (as probed) -> plugin

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    def register(self, plugin: object, name: str) -> None:
        """Register ``plugin`` (an object whose methods, or a module whose functions, carry @hookimpl)."""
        self.pm.register(plugin, name=name)

    def distribution(self, name: str) -> tuple[str, str]:
        """(distribution, version) that shipped the plugin registered as ``name``; ("", "") if unknown."""
        return self.distributions.get(name, ("", ""))

    def plugin_for(self, backend: str) -> object | None:
        """The plugin behind the backend called ``backend``: registered under that name, or one that
        reported that name when probed (a CORRAL_EXTRA_PLUGINS module path names it differently)."""
        return self.pm.get_plugin(backend) or self.backends.get(backend)

    def may_be(self, plugin: object, backend: str) -> bool:
        """Whether ``plugin`` may be the backend ``backend`` without probing it: registered under that
        name, or registered by module path (whose backend name only its probe tells)."""
        name = self.pm.get_name(plugin)
        return name == backend or name in self.extra


def load_plugins(config: Config | None = None, *, load_entrypoints: bool = True) -> PluginHost:
    """A fresh plugin host: hookspecs, the core defaults, every ``corral`` entry point, extra plugins.

    Entry points are imported one at a time; one that fails to import is recorded in
    ``host.failures`` and the others still load. ``CORRAL_LOAD_PLUGINS`` / ``CORRAL_DISABLE_PLUGINS``
    / ``CORRAL_EXTRA_PLUGINS`` / ``CORRAL_TRACE_PLUGINS`` arrive through ``config``.
    """
    host = PluginHost(pluggy.PluginManager(hookspecs.PROJECT))
    pm = host.pm
    pm.add_hookspecs(hookspecs)
    pm.register(defaults, name="corral.defaults")
    only = config.load_plugins if config else None
    blocked = set(config.disable_plugins) if config else set()
    for name in blocked:
        pm.set_blocked(name)
    if load_entrypoints:
        for ep in _entry_points():
            if ep.name in blocked or (only is not None and ep.name not in only):
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            dist = ep.dist.name if ep.dist else ""
            version = ep.dist.version if ep.dist else ""
            try:
                host.register(ep.load(), ep.name)  # the object the entry point names, as pluggy wants it
                host.distributions[ep.name] = (dist, version)
            except Exception as exc:  # a broken plugin must never block the others
                reason = f"plugin failed to load: {type(exc).__name__}: {exc}"
                log.warning("plugin %s (%s): %s", ep.name, ep.value, reason)
                log.debug("%s", traceback.format_exc())
                host.failures.append(PluginFailure(name=ep.name, priority=0, usable=False, reason=reason,
                                                   plugin=dist, version=version))
    for reference in config.extra_plugins if config else ():
        try:
            host.register(resolve_reference(reference), reference)
            host.extra.add(reference)
        except Exception as exc:
            host.failures.append(PluginFailure(name=reference, priority=0, usable=False,
                                               reason=f"plugin failed to load: {type(exc).__name__}: {exc}"))
    if config is not None and config.trace_plugins:
        pm.trace.root.setwriter(log.debug)
        pm.enable_tracing()
    pm.check_pending()
    return host


def resolve_reference(reference: str) -> object:
    """The plugin object ``module:attribute`` names (an entry point's form); a bare module path
    gives the module's ``plugin`` object when it has one, else the module itself."""
    module_path, _, attribute = reference.partition(":")
    target: object = importlib.import_module(module_path)
    if not attribute:
        return getattr(target, "plugin", target)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    seen: set[str] = set()
    out = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in seen:  # an editable and a regular install of the same dist
            seen.add(ep.name)
            out.append(ep)
    return sorted(out, key=lambda e: e.name)
