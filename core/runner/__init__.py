"""Runners host one loaded model each: a subprocess in production, in-process for fast tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from corral.runner.base import RUNNER_STOPPED, Runner
from corral.runner.local import LocalRunner
from corral.runner.process import ProcessRunner

if TYPE_CHECKING:
    from corral.config import Config
    from corral.plugins import PluginHost
    from corral.store.create import Quantizer
    from corral.types import ModelHandle

# Makes a new, not yet started runner; the scheduler starts it and loads the model.
RunnerFactory = Callable[[], Runner]


def subprocess_runners(config: Config, *, backend: str | None = None,
                       explain: Callable[[ModelHandle], str | None] | None = None) -> RunnerFactory:
    """Runners in their own processes (``python -m corral.runner``): what ``corral serve`` uses.

    ``explain`` (usually ``BackendHooks.explain_stop``) names the cause when a loaded runner dies.
    """
    return lambda: ProcessRunner(config, backend=backend, explain=explain)


def local_runners(config: Config, *, host: PluginHost | None = None,
                  backend: str | None = None) -> RunnerFactory:
    """Runners inside this process sharing ``host``: fast, but a native crash takes the process down."""
    return lambda: LocalRunner(config, host=host, backend=backend)


def runner_quantizer(runners: RunnerFactory) -> Quantizer:
    """A store quantizer that runs each quantization in a fresh runner from ``runners`` (in its own
    process in production, through the selected backend like every call into native code).

    Blocking: the store calls it on a worker thread, so the runner lives on that thread's own loop.
    """

    def quantize(source: str, destination: str, file_type: str) -> None:
        async def run() -> None:
            runner = runners()
            try:
                await runner.start()
                await runner.quantize(source, destination, file_type)
            finally:
                await runner.close()

        asyncio.run(run())

    return quantize


__all__ = ["RUNNER_STOPPED", "LocalRunner", "ProcessRunner", "Runner", "RunnerFactory", "local_runners",
           "runner_quantizer", "subprocess_runners"]
