"""llama.cpp's RPC backend, driven: workers registered as devices in a runner; the server a worker runs."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from corral.errors import BackendError, ModelLoadError
from corral.types import DeviceInfo, WorkerInfo
from corral_plugins._llama.library import Native

log = logging.getLogger("corral.worker")

_lock = threading.Lock()
_registered: dict[str, list[str]] = {}  # endpoint -> names of its devices, registered in this process
_serving: list[Any] = []  # what the running server's C side points at: kept alive for the process
_LAYER_BYTES = 128  # the layer bitmap rpc_worker.c keeps (1024 layers)


def rpc_module(lib_dir: Path) -> Path | None:
    """The RPC backend module a build ships next to its other libraries (libggml-rpc)."""
    found = sorted(p for p in lib_dir.glob("libggml-rpc.*") if p.suffix in (".so", ".dylib", ".dll"))
    return found[0] if found else None


def _registry(native: Native) -> Any:
    """The "RPC" backend registry, loading libggml-rpc first if this process has not yet."""
    lib, ffi = native.lib, native.ffi
    with _lock:
        reg = lib.ggml_backend_reg_by_name(b"RPC")
        if reg == ffi.NULL:
            module = rpc_module(native.lib_dir)
            if module is None:
                raise BackendError(f"this llama.cpp build has no RPC backend (no libggml-rpc in "
                                   f"{native.lib_dir.name}); rebuild it with build_backends.py")
            native.load_module(module)
            reg = lib.ggml_backend_reg_by_name(b"RPC")
        if reg == ffi.NULL:
            raise BackendError("llama.cpp's RPC backend did not register (see the log)")
        return reg


def _entry(native: Native, name: str, ctype: str) -> Any:
    """One of the RPC backend's own functions, found as llama-server finds it (a proc address)."""
    ptr = native.lib.ggml_backend_reg_get_proc_address(_registry(native), name.encode())
    if ptr == native.ffi.NULL:
        raise BackendError(f"llama.cpp's RPC backend does not export {name}")
    return native.ffi.cast(ctype, ptr)


# ---- client: a runner that splits a model over workers --------------------------------------------
def registered(endpoints: list[str] | tuple[str, ...]) -> bool:
    """Whether every one of ``endpoints`` is registered in this process already."""
    with _lock:
        return all(e in _registered for e in endpoints)


def add_workers(native: Native, endpoints: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """Register each worker's devices in this process, as ``llama-server --rpc`` does (add_server, then
    ggml_backend_register), once per endpoint; llama.cpp then splits models over them.

    Connecting is llama.cpp's: a worker that vanished since the caller checked it aborts the process
    (the runner's isolation turns that into an error for its requests).
    """
    ffi, lib = native.ffi, native.lib
    add = _entry(native, "ggml_backend_rpc_add_server", "corral_rpc_add_server_t")
    out: dict[str, list[str]] = {}
    for endpoint in endpoints:
        with _lock:
            if endpoint not in _registered:
                reg = add(endpoint.encode())
                if reg == ffi.NULL:
                    raise ModelLoadError(f"RPC worker {endpoint} offers no devices")
                lib.ggml_backend_register(reg)
                names = []
                for i in range(lib.ggml_backend_reg_dev_count(reg)):
                    names.append(ffi.string(lib.ggml_backend_dev_name(lib.ggml_backend_reg_dev_get(reg, i)))
                                 .decode("utf-8", "replace"))
                _registered[endpoint] = names
            out[endpoint] = list(_registered[endpoint])
    return out


# ---- worker: llama.cpp's RPC server in this process -----------------------------------------------
def best_devices(native: Native) -> list[Any]:
    """What ``rpc-server`` offers by default: every GPU (integrated ones too), else the CPU."""
    lib = native.lib
    gpus = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())
            if int(lib.ggml_backend_dev_type(lib.ggml_backend_dev_get(i))) in
            (int(lib.GGML_BACKEND_DEVICE_TYPE_GPU), int(lib.GGML_BACKEND_DEVICE_TYPE_IGPU))]
    if gpus:
        return gpus
    cpu = lib.ggml_backend_dev_by_type(lib.GGML_BACKEND_DEVICE_TYPE_CPU)
    if cpu == native.ffi.NULL:
        raise BackendError("no CPU device registered")
    return [cpu]


def start_server(native: Native, endpoint: str, *, cache_dir: str | None, threads: int,
                 memory_limit: int, ready_timeout: float = 30.0) -> WorkerInfo:
    """Run ``ggml_backend_rpc_start_server`` on a daemon thread for this host's best devices, each
    wrapped so it offers at most ``memory_limit`` bytes (0: all it has) and reports what clients hold.

    Returns once the server accepts connections; raises BackendError if it stops first (the address
    is taken, say). It serves until the process ends: llama.cpp's server has no stop.
    """
    ffi, lib = native.ffi, native.lib
    start = _entry(native, "ggml_backend_rpc_start_server", "corral_rpc_start_server_t")
    wrapped = []
    for dev in best_devices(native):
        w = lib.corral_worker_device(dev, int(memory_limit))
        if w == ffi.NULL:
            raise BackendError("could not wrap the device for the RPC server")
        wrapped.append(w)
    devices = ffi.new("ggml_backend_dev_t[]", wrapped)
    c_endpoint = ffi.new("char[]", endpoint.encode())
    c_cache = ffi.new("char[]", cache_dir.encode()) if cache_dir else ffi.NULL
    _serving.extend([devices, c_endpoint, c_cache])  # the server keeps cache_dir's pointer for good
    n_threads = threads if threads > 0 else _default_threads()
    thread = threading.Thread(target=start, args=(c_endpoint, c_cache, n_threads, len(wrapped), devices),
                              name="llama-rpc-server", daemon=True)
    thread.start()
    host, _, port = endpoint.rpartition(":")
    deadline = time.monotonic() + ready_timeout
    while True:
        if not thread.is_alive():
            raise BackendError(f"llama.cpp's RPC server could not listen on {endpoint} (is the port taken?)")
        try:
            # A connection that sends nothing: the server takes it, reads EOF and waits for the next.
            with socket.create_connection((host, int(port)), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise BackendError(f"llama.cpp's RPC server did not start listening on {endpoint}") from None
            time.sleep(0.05)
    infos = [native.device_info(w) for w in wrapped]
    threading.Thread(target=_report_usage, args=(native, wrapped, infos), name="corral-worker-usage",
                     daemon=True).start()
    return WorkerInfo(endpoint=endpoint, devices=infos, cache_dir=cache_dir)


def _default_threads() -> int:
    from corral_plugins._llama.slots import default_threads

    return default_threads()


def device_usage(native: Native, dev: Any) -> tuple[int, int, list[int]]:
    """(bytes clients hold, the cap or 0, the model layers whose weights they placed) on a wrapped device."""
    ffi = native.ffi
    used, limit = ffi.new("size_t *"), ffi.new("size_t *")
    bits = ffi.new("unsigned char[]", _LAYER_BYTES)
    native.lib.corral_worker_device_usage(dev, used, limit, bits, _LAYER_BYTES)
    layers = [i * 8 + b for i, byte in enumerate(ffi.unpack(bits, _LAYER_BYTES)) for b in range(8)
              if byte >> b & 1]
    return int(used[0]), int(limit[0]), layers


def describe_layers(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    runs: list[str] = []
    for layer in layers:
        if runs and runs[-1].split("-")[-1] == str(layer - 1):
            runs[-1] = f"{runs[-1].split('-')[0]}-{layer}"
        else:
            runs.append(str(layer))
    return ", ".join(runs)


def _report_usage(native: Native, wrapped: list[Any], infos: list[DeviceInfo]) -> None:
    """Log what clients hold on each device whenever it changes (a worker's one view of its clients)."""
    last: list[tuple[int, list[int]]] = [(0, [])] * len(wrapped)
    while True:
        time.sleep(0.5)
        for i, dev in enumerate(wrapped):
            used, limit, layers = device_usage(native, dev)
            if (used, layers) == last[i]:
                continue
            last[i] = (used, layers)
            held = f"layers {describe_layers(layers)}" if layers else "no model layers"
            cap = f" of {limit / 2**20:.0f} MiB offered" if limit else ""
            log.info("%s: clients hold %.1f MiB%s (%s)", infos[i].name, used / 2**20, cap, held)
