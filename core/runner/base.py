"""What every runner offers the scheduler: one loaded model behind async calls."""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncGenerator, Callable

from corral.errors import BackendError
from corral.spec import ModelSpec
from corral.types import (
    DeviceInfo,
    EmbeddingResult,
    GenerationRequest,
    LoadOptions,
    MemoryEstimate,
    ModelHandle,
    RerankResult,
    TokenEvent,
)

log = logging.getLogger("corral.runner")

# Ollama's wording, with our product name: clients and users already recognise it.
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
    "check corral server logs for details"
)


def runner_stopped(cause: str | None = None) -> str:
    """The error for requests whose runner stopped: the backend's explanation when it has one."""
    return f"model runner has unexpectedly stopped: {cause}" if cause else RUNNER_STOPPED


def model_file(spec: ModelSpec) -> str:
    """The GGUF a runner loads for ``spec`` (the scheduler never asks for a spec without one)."""
    if spec.files.model is None:
        raise BackendError(f"{spec.display!r} has no model weights to load")
    return spec.files.model


class Runner(abc.ABC):
    """Hosts at most one loaded model. Subclasses: ``ProcessRunner`` (a subprocess), ``LocalRunner``."""

    def __init__(self) -> None:
        self.handle: ModelHandle | None = None
        self.backend: str = ""
        self.devices: list[DeviceInfo] = []  # the selected backend's devices, as its probe saw them
        self._stopped_callbacks: list[Callable[[Runner], None]] = []

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """False once the runner has stopped (crashed or closed); it never comes back."""

    @property
    def pid(self) -> int | None:
        """The runner's process id, or None when it runs inside this process."""
        return None

    def add_stopped_callback(self, callback: Callable[[Runner], None]) -> None:
        """Call ``callback(self)`` once when the runner stops for any reason (crash or close)."""
        self._stopped_callbacks.append(callback)

    def _notify_stopped(self) -> None:
        callbacks, self._stopped_callbacks = self._stopped_callbacks, []
        for cb in callbacks:
            try:
                cb(self)
            except Exception:  # a broken observer must not hide the crash from the others
                log.exception("runner stopped-callback failed")

    @abc.abstractmethod
    async def start(self) -> None:
        """Get a backend ready (build the plugin manager and select the backend)."""

    @abc.abstractmethod
    async def estimate(self, spec: ModelSpec, options: LoadOptions) -> MemoryEstimate | None:
        """What loading ``spec``'s model with ``options`` would take per device (None: cannot tell)."""

    @abc.abstractmethod
    async def load(self, spec: ModelSpec, options: LoadOptions, memory_limits: dict[str, int] | None = None,
                   progress: Callable[[float], None] | None = None) -> ModelHandle:
        """Load ``spec``'s model file with ``options`` within ``memory_limits`` (bytes per device); the
        handle is kept in ``self.handle``.

        ``progress``, if given, is called on the event loop with the fraction of the weights loaded
        (0.0 to 1.0, rising), as often as the backend reports it."""

    @abc.abstractmethod
    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        ...

    @abc.abstractmethod
    async def detokenize(self, tokens: list[int], *, render_special: bool = False) -> str:
        ...

    @abc.abstractmethod
    async def token_pieces(self, tokens: list[int]) -> list[bytes]:
        """Each token's bytes (control tokens as their text)."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        """Stream token events; closing the iterator early cancels the generation at once."""

    @abc.abstractmethod
    async def embed(self, inputs: list[list[int]], *, normalize: bool = True) -> EmbeddingResult:
        ...

    @abc.abstractmethod
    async def rerank(self, query: str, documents: list[str]) -> RerankResult:
        ...

    @abc.abstractmethod
    async def quantize(self, source: str, destination: str, file_type: str) -> None:
        """Quantize the GGUF at ``source`` into ``destination`` with this runner's backend (no model
        needs to be loaded)."""

    @abc.abstractmethod
    async def unload(self) -> None:
        """Free the model; the runner stays usable for another load."""

    @abc.abstractmethod
    async def close(self, timeout: float = 10.0) -> None:
        """Unload and stop for good. Idempotent."""
