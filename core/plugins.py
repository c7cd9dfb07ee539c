"""Build the plugin manager: hookspecs, core defaults, then each entry-point plugin on its own."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import traceback
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


def make_plugin_manager(
    config: Config | None = None, *, load_entrypoints: bool = True
) -> pluggy.PluginManager:
    """A fresh plugin manager. No module-global one exists: callers own theirs.

    Entry points in the ``corral`` group are imported one at a time; one that fails to import is
    recorded in ``pm.corral_failures`` (a list of ``PluginFailure``) and the others still load.
    ``CORRAL_LOAD_PLUGINS`` / ``CORRAL_DISABLE_PLUGINS`` / ``CORRAL_EXTRA_PLUGINS`` /
    ``CORRAL_TRACE_PLUGINS`` arrive through ``config``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(defaults, name="corral.defaults")
    failures: list[PluginFailure] = []
    pm.corral_failures = failures  # type: ignore[attr-defined]
    pm.corral_dists = {}  # type: ignore[attr-defined]  # plugin name -> (distribution, version)
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
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
                pm.corral_dists[ep.name] = (dist, version)  # type: ignore[attr-defined]
            except Exception as exc:  # a broken plugin must never block the others
                reason = f"plugin failed to load: {type(exc).__name__}: {exc}"
                log.warning("plugin %s (%s): %s", ep.name, ep.value, reason)
                log.debug("%s", traceback.format_exc())
                failures.append(PluginFailure(name=ep.name, priority=0, usable=False, reason=reason,
                                              plugin=dist, version=version))
    for module_path in config.extra_plugins if config else ():
        try:
            pm.register(importlib.import_module(module_path), name=module_path)
        except Exception as exc:
            failures.append(PluginFailure(name=module_path, priority=0, usable=False,
                                          reason=f"plugin failed to load: {type(exc).__name__}: {exc}"))
    if config is not None and config.trace_plugins:
        pm.trace.root.setwriter(log.debug)
        pm.enable_tracing()
    pm.check_pending()
    return pm


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    seen: set[str] = set()
    out = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in seen:  # an editable and a regular install of the same dist
            seen.add(ep.name)
            out.append(ep)
    return sorted(out, key=lambda e: e.name)


def plugin_distribution(pm: pluggy.PluginManager, name: str) -> tuple[str, str]:
    """(distribution, version) that shipped the plugin registered as ``name``."""
    return getattr(pm, "corral_dists", {}).get(name, ("", ""))
