"""The rpc backend plugin: models split by llama.cpp over RPC workers (``corral worker``) and this host."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import msgspec

from corral.config import Config
from corral.errors import BackendUnavailableError, ModelLoadError
from corral.hookspecs import hookimpl
from corral.types import BackendInfo, LoadOptions, MemoryEstimate, ModelHandle, WorkerInfo
from corral_plugins._llama.backend import LlamaBackend, Probe, build_version
from corral_plugins._llama.model import check_gguf
from corral_plugins._llama.rpc import add_workers, rpc_module
from corral_plugins._llama.rpc import registered as all_registered
from corral_plugins.rpc.placement import device_need, mib
from corral_plugins.rpc.probe import WorkerStatus, probe_workers

# Above every local backend: when workers are configured, using them is what was asked for.
PRIORITY = 400
LOCAL_BUILDS = ("metal", "cuda", "cpu")  # the local devices come from the best of these that runs here
WORKER_MARK = "@"  # a handle's device "RPC0@10.0.0.5:50052": llama.cpp's device name, then the worker
NO_WORKERS = ("no workers: list them in CORRAL_WORKERS=host:port,... or `corral serve --workers`, "
              "and start each with `corral worker`")


class RpcBackend(LlamaBackend):
    """The llama.cpp backend of the best local build, with each configured worker's devices added.

    A runner registers the workers as llama-server's ``--rpc`` does; llama.cpp then puts the layers on
    them (and on local GPUs) in proportion to free memory, or by ``tensor_split``, with each layer's
    KV cache beside it. llama.cpp's RPC server takes one client at a time, so one model at a time.
    """

    def __init__(self) -> None:
        cpu = Path(__file__).resolve().parent.parent / "cpu" / "_lib"
        super().__init__("rpc", cpu, PRIORITY, self._probe_local)
        self._config: Config | None = None

    def config(self) -> Config:
        return self._config if self._config is not None else Config.from_env()

    def _probe_local(self, lib_dir: Path, config: Config) -> Probe:
        """The first local build that runs here and has llama.cpp's RPC backend."""
        why = []
        for name in LOCAL_BUILDS:
            try:
                plugin = importlib.import_module(f"corral_plugins.{name}").plugin
            except Exception as exc:  # a broken sibling plugin only removes one choice
                why.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            found = plugin.probe(config)
            if not found.usable:
                why.append(f"{name}: {found.reason}")
            elif rpc_module(plugin.lib_dir) is None:
                why.append(f"{name}: built without llama.cpp's RPC backend")
            else:
                self.lib_dir = plugin.lib_dir
                return Probe(True, f"local devices of the {name} backend", list(found.modules),
                             list(found.devices))
        return Probe(False, "no local llama.cpp build runs here (" + "; ".join(why) + ")")

    # ---- discovery -----------------------------------------------------------------------------
    @hookimpl
    def corral_probe_backend(self, config: Config) -> BackendInfo:
        self._config = config
        version = build_version(self.lib_dir)
        if not config.workers:
            return BackendInfo(name=self.name, priority=self.priority, usable=False, reason=NO_WORKERS,
                               version=version)
        local = self.probe(config)
        if not local.usable:
            return BackendInfo(name=self.name, priority=self.priority, usable=False, reason=local.reason,
                               version=version)
        statuses = probe_workers(config.workers)
        ready = sum(s.ok for s in statuses)
        reason = (f"{ready} of {len(statuses)} workers ready: " + "; ".join(s.describe() for s in statuses)
                  + f"; {local.reason}")
        if ready < len(statuses):
            reason += " (models fail to load until every worker answers)"
        devices = [d for s in statuses for d in s.devices] + list(local.devices)
        return BackendInfo(name=self.name, priority=self.priority, usable=True, reason=reason,
                           devices=devices, version=version, max_models=1)

    # ---- models --------------------------------------------------------------------------------
    def _connect(self, path: str, options: LoadOptions, check_room: bool) -> dict[str, list[str]]:
        """Every worker checked (llama.cpp's client aborts the process on one it cannot reach), the
        model's rough need checked against what they offer when no fit will move layers to the host
        (``check_room``), then the workers added as devices."""
        workers = self.config().workers
        if not workers:
            raise BackendUnavailableError(f"backend 'rpc' cannot load models: {NO_WORKERS}")
        if all_registered(workers):  # this runner's estimate connected them: a probe now would wait in
            return add_workers(self.native(), workers)  # their queue behind our own connection
        statuses = probe_workers(workers)
        bad = [s for s in statuses if not s.ok]
        if bad:
            raise ModelLoadError("cannot split the model over the RPC workers: "
                                 + "; ".join(s.describe() for s in bad))
        if check_room:
            self._check_room(path, options, statuses)
        # A worker lost from here on aborts the runner; ggml's gdb backtrace would only delay the error.
        os.environ.setdefault("GGML_NO_BACKTRACE", "1")
        return add_workers(self.native(), workers)

    @hookimpl
    def corral_estimate_memory(self, path: str, options: LoadOptions) -> MemoryEstimate:
        """llama.cpp's measurement with the workers' devices in place: their share and free memory
        come from the workers themselves (as the memory cap of ``corral worker --memory`` reports it)."""
        # With num_gpu unset the scheduler and llama.cpp's fit may keep layers on the host: no refusal here.
        self._connect(path, options, check_room=options.num_gpu != -1 or bool(options.tensor_split))
        return super().corral_estimate_memory(path, options)

    @hookimpl
    def corral_load_model(self, path: str, options: LoadOptions, progress: Callable[[float], bool] | None,
                          memory_limits: dict[str, int] | None) -> ModelHandle:
        fitted = bool(memory_limits) and options.num_gpu == -1 and not options.tensor_split
        registered = self._connect(path, options, check_room=not fitted)
        handle = super().corral_load_model(path, options, progress, memory_limits)
        # The handle names each worker's devices with its endpoint: corral_explain_stop runs in the
        # server, from the handle alone, and must know which workers this model was spread over.
        remote = {name for names in registered.values() for name in names}
        local = tuple(d for d in handle.devices if d not in remote)
        return msgspec.structs.replace(handle, devices=local + tuple(
            f"{name}{WORKER_MARK}{endpoint}" for endpoint, names in registered.items() for name in names))

    def _check_room(self, path: str, options: LoadOptions, statuses: list[WorkerStatus]) -> None:
        """Refuse, with the numbers, a model whose weights and KV cache cannot fit the split devices
        (the workers and this host's GPUs); before anything native is loaded."""
        need = device_need(check_gguf(path), options)
        local = [d for d in self.probe().devices if d.type in ("gpu", "igpu")]
        offered = sum(s.free for s in statuses) + sum(d.memory_free for d in local)
        if need.total <= offered:
            return
        where = "; ".join([f"{s.endpoint} {mib(s.free)} free" for s in statuses]
                          + [f"{d.name} {mib(d.memory_free)} free" for d in local])
        raise ModelLoadError(
            f"the model does not fit the RPC workers: its {need.layers} offloaded layers and output need "
            f"about {mib(need.weights)} of weights and {mib(need.kv_cache)} of KV cache (num_ctx "
            f"{options.num_ctx} x {options.num_parallel} sequences), but the workers offer {mib(offered)} "
            f"({where}); add workers, give them more memory (corral worker --memory), lower num_ctx, "
            f"or keep layers on this host with num_gpu")

    def corral_start_worker(self, endpoint: str, cache_dir: str | None, threads: int,
                            memory_limit: int) -> WorkerInfo | None:
        """Not a hook here (no @hookimpl): a worker offers its own devices, not other workers'."""
        return None

    @hookimpl
    def corral_explain_stop(self, handle: ModelHandle) -> str | None:
        used = [d.split(WORKER_MARK, 1)[1] for d in handle.devices if WORKER_MARK in d]
        endpoints = list(dict.fromkeys(used)) or list(self.config().workers)
        lost = [s for s in probe_workers(endpoints) if s.state in ("unreachable", "broken")]
        if not lost:
            return None
        return "lost RPC worker " + "; ".join(f"{s.endpoint} ({s.state}: {s.detail})" for s in lost)


# The plugin object: the "rpc" entry point names it, as the cpu, cuda and metal ones name theirs.
plugin = RpcBackend()
