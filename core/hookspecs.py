"""Hook specifications for corral plugins. Each hook's docstring is its contract."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    from corral.config import Config
    from corral.types import (
        BackendInfo,
        CancelToken,
        EmbeddingResult,
        GenerationRequest,
        LoadOptions,
        MemoryEstimate,
        ModelHandle,
        RerankResult,
        TokenEvent,
        WorkerInfo,
    )

PROJECT = "corral"
hookspec = HookspecMarker(PROJECT)
hookimpl = HookimplMarker(PROJECT)
# Called on every plugin; every other hook is a per-model operation that corral.selection.BackendHooks
# routes to the selected backend alone.
ON_EVERY_PLUGIN = ("corral_probe_backend", "corral_select_backend")


# ---- discovery and selection: called on every plugin ---------------------------------------------
@hookspec
def corral_probe_backend(config: Config) -> BackendInfo | None:
    """Describe this backend on this machine; return None if the plugin is not a backend.

    Cheap (well under a second), loads no weights and never raises: a backend that cannot run here
    returns ``BackendInfo(usable=False, reason=...)`` saying why. Probes that might crash the
    process (loading a GPU driver) run in a subprocess with a timeout.
    """


@hookspec(firstresult=True)
def corral_select_backend(candidates: list[BackendInfo], requested: str | None) -> str | None:
    """Pick the backend this process uses. Stops at the first non-None result.

    The core's default (``trylast``) returns ``requested`` when it is usable and otherwise the usable
    candidate with the highest priority; an unusable or unknown ``requested`` raises
    ``BackendUnavailableError`` listing every candidate. Never a silent fallback.
    """


# ---- per-model operations: called only on the selected backend -----------------------------------
@hookspec(firstresult=True)
def corral_estimate_memory(path: str, options: LoadOptions) -> MemoryEstimate | None:
    """What loading the GGUF at ``path`` with ``options`` would take on each device, without loading it.

    One ``DeviceMemory`` per device the model would use (the host, ``types.HOST``, first): weights,
    context (KV cache for ``num_ctx x num_parallel`` at ``kv_cache_type``), compute buffers and any
    projector, with the device's free and total memory now. ``options.num_gpu`` -1 estimates the
    full offload. The scheduler evicts idle models and refuses loads with these numbers. Costs about
    a model's metadata read; None if the backend cannot tell (the scheduler then counts models only).
    """


@hookspec(firstresult=True)
def corral_load_model(
    path: str, options: LoadOptions, progress: Callable[[float], bool] | None,
    memory_limits: dict[str, int] | None,
) -> ModelHandle:
    """Load the GGUF file at ``path`` (and ``options.projector``, a multimodal projector GGUF, beside
    it) and return a pure-data handle whose ``memory`` says what it holds on each device.

    ``progress`` (if given) is called with 0.0..1.0; returning False cancels the load.
    ``memory_limits`` (device name to bytes; None or a missing device: no limit) is what this model may
    take on each device: with ``options.num_gpu`` -1 the backend offloads as many layers as fit those
    limits (and the rest stays on the host), never all of them regardless. A file that is not a usable
    GGUF raises ``InvalidModelFileError``; any other failure, not fitting included, ``ModelLoadError``.
    """


@hookspec(firstresult=True)
def corral_tokenize(
    handle: ModelHandle, text: str, add_special: bool, parse_special: bool
) -> list[int]:
    """Turn text into token ids. ``add_special`` adds BOS/EOS as the model wants them;
    ``parse_special`` lets control-token text such as ``<start_of_turn>`` become that token."""


@hookspec(firstresult=True)
def corral_detokenize(handle: ModelHandle, tokens: list[int], render_special: bool) -> str:
    """Turn token ids into text; whole tokens in, whole UTF-8 characters out."""


@hookspec(firstresult=True)
def corral_token_pieces(handle: ModelHandle, tokens: list[int]) -> list[bytes]:
    """Each token's own bytes, control tokens as their text; a piece may hold part of a UTF-8 character."""


@hookspec(firstresult=True)
def corral_generate(
    handle: ModelHandle, request: GenerationRequest, cancel: CancelToken
) -> Iterator[TokenEvent]:
    """Generate from ``request.prompt``: a blocking iterator of ``TokenEvent``.

    ``request.media`` (images, audio as the client's encoded bytes) sit between prompt tokens; a model
    loaded with a ``LoadOptions.projector`` reads them (``ModelInfo.vision``/``audio`` say which) and
    counts their tokens in ``stats.prompt_tokens``. Media the model cannot read raise
    ``CapabilityError``, bad bytes ``InvalidRequestError``: never dropped silently.

    Several calls may run at once from different threads (up to ``options.num_parallel``); a backend
    that can, decodes them together in one batch. The iterator checks ``cancel`` between tokens and
    then ends with ``finish_reason="stop"``. Stop strings are never emitted. The last event carries
    ``finish_reason`` and ``stats``. Raises only ``CorralError`` subclasses.
    """


@hookspec(firstresult=True)
def corral_embed(
    handle: ModelHandle, inputs: list[list[int]], normalize: bool, cancel: CancelToken
) -> EmbeddingResult:
    """Return one pooled embedding per token list (L2-normalised when ``normalize``).

    ``cancel`` is checked between inputs: once it is set (the client left), stop and raise
    ``GenerationCancelledError``. A model that cannot embed raises ``CapabilityError``."""


@hookspec(firstresult=True)
def corral_rerank(handle: ModelHandle, query: str, documents: list[str]) -> RerankResult:
    """Score each document's relevance to ``query`` with a reranker (``handle.info.pooling == "rank"``).

    The backend builds each query/document input as llama-server does: the model's ``rerank`` chat
    template when it has one (``{query}`` and ``{document}`` replaced, special tokens parsed), else
    BOS, query, EOS, SEP, document, EOS as the vocabulary adds them. Scores are the raw first output
    of the rank head, in the documents' order. A model that is not a reranker raises
    ``CapabilityError``; an input longer than the context raises ``ContextLengthError``.
    """


@hookspec(firstresult=True)
def corral_unload(handle: ModelHandle) -> bool | None:
    """Free everything ``handle`` holds. Idempotent: unloading twice is not an error."""


@hookspec(firstresult=True)
def corral_quantize(source: str, destination: str, file_type: str,
                    progress: Callable[[float], bool] | None) -> bool:
    """Quantize the F32/F16/BF16 GGUF at ``source`` into ``destination`` as ``file_type``
    (``q4_K_M``, ``q4_K_S`` or ``q8_0``), in a runner process of the selected backend. Return True
    when done; None if this backend cannot. An unsupported source or type raises ``InvalidRequestError``."""


@hookspec(firstresult=True)
def corral_explain_stop(handle: ModelHandle) -> str | None:
    """Why the runner that served ``handle`` stopped unexpectedly, as far as the backend can tell from
    outside it: one sentence naming the cause (an RPC worker that went away), or None.

    Called in the server, on the selected backend, right after such a stop; the sentence becomes
    part of the error the stopped requests get. Quick (a second or two) and never raises.
    """


# ---- RPC workers: called on the backend `corral worker` selects ----------------------------------
@hookspec(firstresult=True)
def corral_start_worker(endpoint: str, cache_dir: str | None, threads: int,
                        memory_limit: int) -> WorkerInfo | None:
    """Start llama.cpp's RPC server in this process, on a thread of its own, listening on ``endpoint``
    (``host:port``) and offering this host's best devices (its GPUs, else the CPU); return what it offers.

    ``cache_dir`` keeps received weights so a client that reconnects need not send them again (None:
    no cache); ``threads`` is the CPU thread count (0: the backend decides); ``memory_limit`` caps the
    bytes each device offers and lets clients allocate (0: no cap). Returns None if this backend
    cannot run a worker; raises ``BackendError`` if the server cannot start or listen.
    """
