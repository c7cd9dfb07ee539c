"""Runners host one loaded model each: a subprocess in production, in-process for fast tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from corral.runner.base import RUNNER_STOPPED, Runner
from corral.runner.local import LocalRunner
from corral.runner.process import ProcessRunner

if TYPE_CHECKING:
    import pluggy

    from corral.config import Config

# Makes a new, not yet started runner; the scheduler starts it and loads the model.
RunnerFactory = Callable[[], Runner]


def subprocess_runners(config: Config, *, backend: str | None = None) -> RunnerFactory:
    """Runners in their own processes (``python -m corral.runner``): what ``corral serve`` uses."""
    return lambda: ProcessRunner(config, backend=backend)


def local_runners(config: Config, *, pm: pluggy.PluginManager | None = None,
                  backend: str | None = None) -> RunnerFactory:
    """Runners inside this process sharing ``pm``: fast, but a native crash takes the process down."""
    return lambda: LocalRunner(config, pm=pm, backend=backend)


__all__ = ["RUNNER_STOPPED", "LocalRunner", "ProcessRunner", "Runner", "RunnerFactory", "local_runners",
           "subprocess_runners"]
