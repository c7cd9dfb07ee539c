"""The one hook implementation shared by the cpu, cuda and metal plugins (they differ in probe and folder)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from corral.config import Config
from corral.errors import BackendError, BackendUnavailableError, CapabilityError, CorralError
from corral.hookspecs import hookimpl
from corral.types import (
    BackendInfo,
    CancelToken,
    DeviceInfo,
    EmbeddingResult,
    GenerationRequest,
    LoadOptions,
    MemoryEstimate,
    ModelHandle,
    RerankResult,
    TokenEvent,
    WorkerInfo,
)
from corral_plugins._llama import library

log = logging.getLogger("corral.llama.backend")

@dataclass
class Probe:
    """What a hardware probe found: usable or not and why, the modules to load, the devices."""

    usable: bool
    reason: str
    modules: list[Path] = field(default_factory=list)
    devices: list[DeviceInfo] = field(default_factory=list)


ProbeFn = Callable[[Path, Config], Probe]


@dataclass
class _NativeModel:
    model: Any  # LlamaModel
    projector: Any = None  # Projector (libmtmd), when the model has one
    batcher: Any = None  # Batcher, unless loaded for embeddings only
    draft: Any = None  # LlamaModel of the draft model (Modelfile DRAFT), drafting beside the batcher's
    embedder: Any = None  # Embedder, created on the first embed
    embed_error: CorralError | None = None  # why the Embedder could not be made (not retried per call)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LlamaBackend:
    """Hook implementations for one llama.cpp build folder; an instance is the plugin object that
    the cpu, cuda and metal entry points name (``corral_plugins.cpu:plugin``).

    Native libraries are loaded only when this backend loads a model (or quantizes), never by a
    probe, so probing the cuda plugin on a machine without a driver cannot crash the process.
    Native objects live in ``_models`` keyed by ``ModelHandle.id``; handles stay pure data.
    """

    def __init__(self, name: str, lib_dir: Path, priority: int, probe_fn: ProbeFn) -> None:
        self.name = name
        self.lib_dir = Path(lib_dir)
        self.priority = priority
        self.probe_fn = probe_fn
        self._probe: Probe | None = None
        self._models: dict[str, _NativeModel] = {}
        self._lock = threading.Lock()

    # ---- discovery -----------------------------------------------------------------------------
    def probe(self, config: Config | None = None) -> Probe:
        """Run (once per process) the hardware probe; later calls reuse the answer."""
        if self._probe is None:
            try:
                self._probe = self.probe_fn(self.lib_dir, config or Config.from_env())
            except CorralError as exc:
                self._probe = Probe(False, str(exc))
            except Exception as exc:  # a probe never raises: the row says what broke
                log.exception("probe of %s failed", self.name)
                self._probe = Probe(False, f"probe failed: {type(exc).__name__}: {exc}")
        return self._probe

    @hookimpl
    def corral_probe_backend(self, config: Config) -> BackendInfo:
        p = self.probe(config)
        devices = p.devices
        native = library.loaded()
        if native is not None and native.lib_dir == self.lib_dir.resolve():
            devices = native.devices()
        return BackendInfo(name=self.name, priority=self.priority, usable=p.usable, reason=p.reason,
                           devices=list(devices), version=build_version(self.lib_dir))

    def native(self) -> library.Native:
        p = self.probe()
        if not p.usable:
            raise BackendUnavailableError(f"backend {self.name!r} cannot run here: {p.reason}")
        return library.load(self.lib_dir, p.modules)

    # ---- models --------------------------------------------------------------------------------
    @hookimpl
    def corral_estimate_memory(self, path: str, options: LoadOptions) -> MemoryEstimate:
        from corral_plugins._llama.memory import estimate

        return estimate(self.native(), path, options)

    @hookimpl
    def corral_load_model(self, path: str, options: LoadOptions, progress: Callable[[float], bool] | None,
                          memory_limits: dict[str, int] | None) -> ModelHandle:
        from corral_plugins._llama.memory import fit_layers, usage
        from corral_plugins._llama.model import LlamaModel, ModelParams

        native = self.native()
        params = ModelParams(native, options)
        if memory_limits:
            fit_layers(native, path, options, params, memory_limits)
        model = LlamaModel(native, path, options, progress, params=params)
        entry = _NativeModel(model=model)
        try:
            info = model.info
            if not options.embedding:
                from corral_plugins._llama.batcher import Batcher
                from corral_plugins._llama.embed import embed_context

                if options.projector:
                    from corral_plugins._llama.projector import Projector

                    entry.projector = Projector(model, options.projector, options)
                    info = msgspec.structs.replace(info, vision=entry.projector.vision,
                                                   audio=entry.projector.audio)
                if options.draft and options.speculative and options.draft_num_predict != 0:
                    # The draft shares the model's placement; LoRA, tensor split and projector are not its.
                    entry.draft = LlamaModel(native, options.draft, msgspec.structs.replace(
                        options, adapters=(), tensor_split=(), projector="", draft=""))
                # The batcher applies LoRA to its context and runs the projector's encoder thread.
                entry.batcher = Batcher(native, model, options, entry.projector, entry.draft)
                info = msgspec.structs.replace(
                    info, n_ctx=int(entry.batcher.n_ctx_seq), can_shift=bool(entry.batcher.can_shift),
                    n_ctx_embed=embed_context(options, info.n_ctx_train))
            else:
                entry.embedder = self._embedder(model, options)
                n = int(entry.embedder.n_batch)
                info = msgspec.structs.replace(info, n_ctx=n, n_ctx_embed=n)
            contexts = entry.batcher.contexts if entry.batcher is not None else [entry.embedder.ctx]
            layers = 0
            if any(d.type != "cpu" for d in native.devices()):  # -1: every layer and the output
                n = int(params.ptr.n_gpu_layers)
                layers = n if n >= 0 else int(native.lib.llama_model_n_layer(model.ptr)) + 1
            memory = usage(native, contexts, options, layers)
        except BaseException:
            self._close(entry)
            raise
        handle = ModelHandle(id=uuid.uuid4().hex, backend=self.name, path=str(path), options=options,
                             info=info, memory=memory, devices=tuple(d.name for d in native.devices()))
        with self._lock:
            self._models[handle.id] = entry
        return handle

    @staticmethod
    def _embedder(model: Any, options: LoadOptions, batcher: Any = None) -> Any:
        from corral_plugins._llama.embed import Embedder

        turns = batcher.turns if batcher is not None else None  # decodes in turn with its steps
        return Embedder(model, options, n_threads=int(options.num_thread), turns=turns)

    def _entry(self, handle: ModelHandle) -> _NativeModel:
        with self._lock:
            entry = self._models.get(handle.id)
        if entry is None:
            raise BackendError(f"model {handle.path} is not loaded in backend {self.name!r} (unloaded?)")
        return entry

    @hookimpl
    def corral_tokenize(self, handle: ModelHandle, text: str, add_special: bool,
                        parse_special: bool) -> list[int]:
        return self._entry(handle).model.tokenize(text, add_special, parse_special)

    @hookimpl
    def corral_detokenize(self, handle: ModelHandle, tokens: list[int], render_special: bool) -> str:
        return self._entry(handle).model.detokenize(tokens, render_special)

    @hookimpl
    def corral_token_pieces(self, handle: ModelHandle, tokens: list[int]) -> list[bytes]:
        model = self._entry(handle).model
        return [model.token_bytes(t) for t in tokens]  # common_token_to_piece, as llama-server

    @hookimpl
    def corral_generate(self, handle: ModelHandle, request: GenerationRequest,
                        cancel: CancelToken) -> Iterator[TokenEvent]:
        entry = self._entry(handle)
        if entry.batcher is None:
            raise CapabilityError("this model was loaded for embeddings only; it cannot generate")
        return entry.batcher.submit(request, cancel)

    def _embedder_of(self, handle: ModelHandle) -> Any:
        entry = self._entry(handle)
        with entry.lock:  # one embedding context per model, made on first use
            if entry.embedder is None:
                # A failure is remembered for this load: making the context again on every call would
                # cost each one a burst of allocation beside the model's running decodes.
                if entry.embed_error is None:
                    try:
                        entry.embedder = self._embedder(entry.model, handle.options, entry.batcher)
                    except CorralError as exc:
                        entry.embed_error = exc
                if entry.embed_error is not None:  # a fresh one: re-raising would grow its traceback
                    raise type(entry.embed_error)(entry.embed_error.message)
        return entry.embedder

    @hookimpl
    def corral_embed(self, handle: ModelHandle, inputs: list[list[int]], normalize: bool,
                     cancel: CancelToken) -> EmbeddingResult:
        return self._embedder_of(handle).embed(inputs, normalize, cancel=cancel)

    @hookimpl
    def corral_rerank(self, handle: ModelHandle, query: str, documents: list[str]) -> RerankResult:
        from corral_plugins._llama.rerank import rerank

        if handle.info.pooling != "rank":
            raise CapabilityError(f"model {handle.path} is not a reranker (pooling type "
                                  f"{handle.info.pooling!r}, not 'rank')")
        return rerank(self._embedder_of(handle), query, documents)

    @hookimpl
    def corral_unload(self, handle: ModelHandle) -> bool:
        with self._lock:
            entry = self._models.pop(handle.id, None)
        if entry is not None:
            self._close(entry)
        return True

    @staticmethod
    def _close(entry: _NativeModel) -> None:
        # The contexts go before the model they were made from (the batcher's encoder thread before
        # the projector it runs).
        if entry.batcher is not None:
            entry.batcher.close()
        if entry.projector is not None:
            entry.projector.free()
        if entry.embedder is not None:
            entry.embedder.close()
        if entry.draft is not None:
            entry.draft.free()
        entry.model.free()

    @hookimpl
    def corral_quantize(self, source: str, destination: str, file_type: str,
                        progress: Callable[[float], bool] | None) -> bool | None:
        # Called only in a runner process that selected this backend: its build quantizes (on the CPU).
        from corral_plugins._llama.quantize import quantize

        return quantize(self.native(), source, destination, file_type, progress)

    @hookimpl
    def corral_start_worker(self, endpoint: str, cache_dir: str | None, threads: int,
                            memory_limit: int) -> WorkerInfo:
        from corral_plugins._llama.rpc import start_server

        return start_server(self.native(), endpoint, cache_dir=cache_dir, threads=threads,
                            memory_limit=memory_limit)


def build_version(lib_dir: Path) -> str:
    info = lib_dir / "build-info.json"
    try:
        data = msgspec.json.decode(info.read_bytes())
    except (OSError, msgspec.DecodeError):
        return ""
    if not isinstance(data, dict):
        return ""
    return str(data.get("pin") or "")[:9]  # the llama.cpp commit the build came from
