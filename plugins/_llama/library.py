"""Import a backend's compiled cffi module and initialise llama.cpp once per process."""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import BackendError
from corral.types import DeviceInfo

log = logging.getLogger("corral.llama")

# ggml's levels: NONE=0 DEBUG=1 INFO=2 WARN=3 ERROR=4 CONT=5 (CONT continues the previous line).
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_CONT = 5
# Lines llama.cpp logs as warnings or errors about what corral does on purpose, so debug lines here (any
# other line keeps its level):
_ROUTINE = (
    # a decode stopped by its abort callback (a short request preempted it, ComputeTurns.preempt;
    # ggml's status 1 is "aborted")
    "failed with error 1", "compute status: 1", "removing memory module entries", ", ret = 2",
    # "n_ctx_seq (131072) > n_ctx_train (32768)": one unified cache holds every sequence, so llama.cpp
    # compares all their cells with the training context; each sequence's num_ctx is capped at it in the
    # core (corral.options.cap_context)
    "possible training context overflow",
)
_DEV_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


@dataclass
class Native:
    """The loaded binding of one backend folder: cffi ``ffi``/``lib`` and what was loaded into ggml."""

    ffi: Any
    lib: Any
    lib_dir: Path
    modules: tuple[Path, ...]
    _keep: list[Any] = field(default_factory=list, repr=False)

    def devices(self) -> list[DeviceInfo]:
        """Every device ggml registered, with its memory in bytes."""
        lib = self.lib
        return [self.device_info(lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]

    def device_info(self, dev: Any) -> DeviceInfo:
        """One ggml device (a ``ggml_backend_dev_t``) as pure data."""
        ffi, lib = self.ffi, self.lib
        free, total = ffi.new("size_t *"), ffi.new("size_t *")
        lib.ggml_backend_dev_memory(dev, free, total)
        return DeviceInfo(
            name=_text(ffi, lib.ggml_backend_dev_name(dev)),
            description=_text(ffi, lib.ggml_backend_dev_description(dev)),
            type=_DEV_TYPES.get(int(lib.ggml_backend_dev_type(dev)), "accel"),
            memory_total=int(total[0]),
            memory_free=int(free[0]),
        )

    def rpc_devices(self) -> list[DeviceInfo]:
        """The devices of RPC workers registered in this process (their ggml type says GPU)."""
        ffi, lib = self.ffi, self.lib
        out = []
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            if _text(ffi, lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))) == "RPC":
                out.append(self.device_info(dev))
        return out

    def split_devices(self) -> list[DeviceInfo]:
        """The devices llama.cpp splits a model's layers over, in its order (``tensor_split``'s order):
        RPC workers first, then GPUs, then integrated GPUs if there is no GPU (src/llama.cpp)."""
        ffi, lib = self.ffi, self.lib
        rpc, gpus, igpus = [], [], []
        for i, info in enumerate(self.devices()):
            dev = lib.ggml_backend_dev_get(i)
            reg = _text(ffi, lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)))
            if info.type == "gpu":
                (rpc if reg == "RPC" else gpus).append(info)
            elif info.type == "igpu":
                igpus.append(info)
        return rpc + gpus + ([] if gpus else igpus)

    def load_module(self, path: Path) -> None:
        """Load one more ggml backend module into this process (llama.cpp's RPC backend, say)."""
        if self.lib.ggml_backend_load(str(path).encode()) == self.ffi.NULL:
            raise BackendError(f"ggml could not load the backend module {path.name} (see the log)")
        self.modules = (*self.modules, path)

    def system_info(self) -> str:
        return _text(self.ffi, self.lib.llama_print_system_info())


def _text(ffi: Any, p: Any) -> str:
    return "" if p == ffi.NULL else ffi.string(p).decode("utf-8", "replace")


_lock = threading.Lock()
_loaded: Native | None = None


def loaded() -> Native | None:
    """The binding this process initialised, if any."""
    return _loaded


def find_module(lib_dir: Path) -> Path:
    """The compiled ``_llama_<backend>`` extension in ``lib_dir``."""
    found = sorted(p for p in lib_dir.glob("_llama_*") if p.suffix in (".so", ".pyd", ".dylib"))
    if not found:
        raise BackendError(f"no compiled _llama_* module in {lib_dir}: run build_backends.py")
    return found[0]


def import_module(lib_dir: Path) -> Any:
    """Import the extension from its file location (it is not on sys.path; its rpath finds the libs)."""
    path = find_module(lib_dir)
    name = path.name.split(".", 1)[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BackendError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # a missing libllama/libggml next to it, or a wrong Python ABI
        raise BackendError(f"cannot load the llama.cpp binding {path.name}: {exc}") from exc
    return module


def load(lib_dir: str | Path, modules: list[Path] | tuple[Path, ...] = ()) -> Native:
    """Initialise llama.cpp from ``lib_dir`` once per process and return the binding.

    ``modules`` are the ggml backend libraries to load, each with ``ggml_backend_load(path)``;
    never ``load_all``, which would search the interpreter's folder and the CWD and could pick up a
    stray library. A second call with the same folder returns the same binding; another folder in
    the same process is refused (ggml's backend registry is process-global).
    """
    global _loaded
    lib_dir = Path(lib_dir).resolve()
    with _lock:
        if _loaded is not None:
            if _loaded.lib_dir != lib_dir:
                raise BackendError(f"this process already uses the llama.cpp build in {_loaded.lib_dir}; "
                                   f"it cannot also load {lib_dir}")
            return _loaded
        module = import_module(lib_dir)
        ffi, lib = module.ffi, module.lib
        keep = _install_log_callback(ffi, lib)
        for path in modules:
            reg = lib.ggml_backend_load(str(path).encode())
            if reg == ffi.NULL:
                raise BackendError(f"ggml could not load the backend module {path} (see the log)")
        if lib.ggml_backend_dev_count() == 0:
            raise BackendError(f"no ggml device registered from {lib_dir}")
        lib.llama_backend_init()
        _loaded = Native(ffi=ffi, lib=lib, lib_dir=lib_dir, modules=tuple(modules), _keep=keep)
        return _loaded


# ---- logging ---------------------------------------------------------------------------------------
# The callback runs on whichever thread llama.cpp logs from (ggml workers too). It must never block
# on a lock that a thread inside llama_decode could hold, so it only appends to a SimpleQueue (its
# put() is reentrant and lock-free for callers) and a daemon thread hands lines to `logging`.
_records: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
_partial: dict[int, tuple[int, str]] = {}  # thread id -> (level, text not yet ended by a newline)
_errors: dict[int, str] = {}  # thread id -> the last error line llama.cpp logged on that thread
_drainer: threading.Thread | None = None


def clear_error() -> None:
    """Forget the last error llama.cpp logged on this thread (call before a native call)."""
    _errors.pop(threading.get_ident(), None)


def last_error() -> str | None:
    """The last error line llama.cpp logged on this thread since ``clear_error``, if any: the reason
    behind a NULL it returned ("unable to allocate RPC0[10.0.0.5:50052] buffer", say)."""
    return _errors.pop(threading.get_ident(), None)


def _drain() -> None:
    while True:
        level, text = _records.get()
        log.log(level, "%s", text)


def _install_log_callback(ffi: Any, lib: Any) -> list[Any]:
    global _drainer

    @ffi.def_extern()
    def corral_log_cb(level: int, text: Any, user_data: Any) -> None:
        try:
            chunk = ffi.string(text).decode("utf-8", "replace") if text != ffi.NULL else ""
            tid = threading.get_ident()
            prev_level, prev = _partial.pop(tid, (logging.DEBUG, ""))
            py_level = prev_level if int(level) == _CONT else _LEVELS.get(int(level), logging.INFO)
            if int(level) != _CONT and prev:
                _records.put((prev_level, prev))  # a new message ends an unterminated one
                prev = ""
            buf = prev + chunk
            *lines, rest = buf.split("\n")
            for line in lines:
                if line.strip():
                    line_level = logging.DEBUG if any(m in line for m in _ROUTINE) else py_level
                    _records.put((line_level, line))
                    if line_level >= logging.ERROR:
                        _errors[tid] = line.strip()
            if rest:
                _partial[tid] = (py_level, rest)
        except Exception:  # an exception here would only print a cffi traceback to stderr
            pass

    if _drainer is None:
        _drainer = threading.Thread(target=_drain, name="corral-llama-log", daemon=True)
        _drainer.start()
    lib.llama_log_set(lib.corral_log_cb, ffi.NULL)
    lib.mtmd_helper_log_set(lib.corral_log_cb, ffi.NULL)  # libmtmd and clip.cpp log on their own
    # def_extern keeps the function alive with the module; holding it here documents that it must live
    # as long as the process (llama.cpp keeps the pointer globally).
    return [corral_log_cb]
