"""Plain-data types shared by the core and backend plugins (no cffi, no HTTP)."""

from __future__ import annotations

import threading

import msgspec
from msgspec import Struct


# ---- backends ------------------------------------------------------------------------------------
class DeviceInfo(Struct, frozen=True, kw_only=True):
    """One compute device a backend can use."""

    name: str
    description: str = ""
    type: str = "cpu"  # cpu | gpu | igpu | accel | rpc (a device of an RPC worker)
    memory_total: int = 0  # bytes
    memory_free: int = 0  # bytes


class BackendInfo(Struct, kw_only=True):
    """What a backend plugin reports about itself on this machine (the `corral backends` row)."""

    name: str  # one lowercase token: the entry-point name, the --backend value
    priority: int  # higher wins among usable backends
    usable: bool
    reason: str = ""  # why usable or not, in words
    devices: list[DeviceInfo] = msgspec.field(default_factory=list)
    plugin: str = ""  # distribution that ships the plugin
    version: str = ""
    # Models this backend can hold at once (0: no limit of its own). A backend whose devices serve one
    # client at a time (llama.cpp's RPC workers) says 1, and the server unloads before loading another.
    max_models: int = 0


class WorkerInfo(Struct, frozen=True, kw_only=True):
    """An RPC worker running in this process: where llama.cpp's server listens and what it offers."""

    endpoint: str  # host:port the server itself listens on
    devices: list[DeviceInfo]
    cache_dir: str | None = None  # where received weights are kept between clients


# ---- loading -------------------------------------------------------------------------------------
class LoadOptions(Struct, frozen=True, kw_only=True):
    """Everything that changes how a model is loaded; a change means a reload."""

    num_ctx: int = 4096  # context length of each parallel sequence (0 in a request: the scheduler picks)
    num_parallel: int = 4  # sequences decoded together in one batch
    num_batch: int = 512  # logical batch size for prompt evaluation
    num_gpu: int = -1  # layers to offload; -1 = as many as fit / all
    main_gpu: int = 0
    num_thread: int = 0  # 0 = backend picks (physical cores)
    use_mmap: bool | None = None  # None = backend default
    flash_attention: bool | None = None  # None = auto
    kv_cache_type: str = "f16"  # f16 | q8_0 | q4_0
    speculative: bool = True  # speculative decoding at all (CORRAL_SPECULATIVE), verified in the batch
    # Tokens drafted per step (Ollama's draft_num_predict): 0 = no speculation, -1 = the default (4 with a
    # draft model; adaptive prompt-lookup drafting up to 16 without one).
    draft_num_predict: int = -1
    draft: str = ""  # draft model GGUF path (Modelfile DRAFT): drafts with it beside the model
    embedding: bool = False  # load for embeddings (pooled output)
    adapters: tuple[str, ...] = ()  # LoRA GGUF paths, applied with scale 1.0
    projector: str = ""  # multimodal projector GGUF path (mmproj): images or audio in prompts
    # Let llama.cpp repack CPU weights for its faster kernels (llama-server's --no-repack is False).
    # RPC workers cannot hold repacked weights: without repacking the CPU runs their very kernels.
    repack: bool = True
    # Share of the offloaded layers per split device (GPUs, RPC workers) in llama.cpp's order;
    # empty = in proportion to each device's free memory.
    tensor_split: tuple[float, ...] = ()


class ModelInfo(Struct, frozen=True, kw_only=True):
    """Facts about a loaded model that the core needs for prompts, limits and reporting."""

    architecture: str
    n_params: int
    size: int  # bytes of weights
    n_ctx_train: int
    n_ctx: int  # effective context per sequence after the backend's rounding
    n_ctx_embed: int = 0  # the most tokens one embedding input may have (0: n_ctx)
    n_parallel: int
    n_embd: int
    n_vocab: int
    file_type: str = ""  # e.g. Q4_K_M
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool = True
    can_shift: bool = True  # the KV cache supports context shift
    pooling: str = "none"  # none | mean | cls | last | rank
    has_encoder: bool = False
    vision: bool = False  # a projector is loaded and takes images
    audio: bool = False  # a projector is loaded and takes audio


HOST = "CPU"  # the DeviceMemory.device of system RAM (ggml's name for the CPU device)


class DeviceMemory(Struct, frozen=True, kw_only=True):
    """Bytes one model takes (or would take) on one device, and that device's memory when measured."""

    device: str  # ggml's device name: HOST for system RAM, "CUDA0", "Metal", "RPC0[10.0.0.5:50052]"...
    type: str = "cpu"  # cpu | gpu | igpu | accel | rpc (a device of an RPC worker)
    weights: int = 0
    kv_cache: int = 0  # the context's memory: KV cache (or recurrent state) of every sequence
    compute: int = 0  # compute buffers, projector (mmproj) included
    free: int = 0  # the device's free memory when measured (0: unknown)
    total: int = 0  # the device's total memory (0: unknown)

    @property
    def used(self) -> int:
        return self.weights + self.kv_cache + self.compute


class MemoryEstimate(Struct, frozen=True, kw_only=True):
    """What loading a model with some LoadOptions would take on each device, measured before loading.

    ``devices`` lists the host first, then every device the model would use, in llama.cpp's order.
    """

    devices: tuple[DeviceMemory, ...] = ()
    n_layer: int = 0  # the model's repeating layers (num_gpu counts these, plus the output layer)

    @property
    def total(self) -> int:
        return sum(d.used for d in self.devices)


class MemoryUsage(Struct, frozen=True, kw_only=True):
    """Bytes a loaded model holds: total, how much of it is off the host (GPUs, RPC workers), and
    the split per device as the backend measured it after loading."""

    total: int = 0
    vram: int = 0
    devices: tuple[DeviceMemory, ...] = ()
    layers: int = -1  # layers offloaded to the devices (-1: not reported)


class ModelHandle(Struct, frozen=True, kw_only=True):
    """A loaded model. Pure data: native state stays private to the backend, keyed by `id`."""

    id: str
    backend: str
    path: str
    options: LoadOptions
    info: ModelInfo
    memory: MemoryUsage = MemoryUsage()
    devices: tuple[str, ...] = ()


# ---- generation ----------------------------------------------------------------------------------
class JsonConstraint(Struct, frozen=True, kw_only=True):
    """A constraint around one JSON document that matches a schema (a `format`, or a forced tool call
    between its opener and closer), for backends that compile schemas themselves (llguidance);
    ``SamplingParams.grammar`` holds the same language as GBNF for every other backend."""

    schema: str  # JSON text, already normalised to the GBNF conversion's meaning (corral.prompts)
    think_markers: tuple[str, str] | None = None  # a reasoning block (open, close) may come first
    think_inside: bool = False  # the prompt already opened that block
    # A tool call's syntax: the opener (text, or one special token) comes first, then optional
    # whitespace and the JSON, or with `bracketed` a "[" right after it and a "]" after the JSON;
    # the closer (text) follows the JSON's trailing whitespace.
    opener: str = ""
    bracketed: bool = False
    closer: str = ""
    # A lazy constraint (tools with tool_choice auto, OpenAI ``strict``): the text is free until the
    # opener appears (outside a reasoning block; with no opener, a "{" that starts the answer), then
    # the call must match up to its end (the closer, or the JSON's end), then it is free again.
    # ``SamplingParams.grammar`` then holds the language after the opener only (corral.lazycall).
    lazy: bool = False


class SamplingParams(Struct, frozen=True, kw_only=True):
    """How the next token is picked. Defaults are Ollama's."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64  # 0 disables, -1 = whole context
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1  # -1 = random
    logit_bias: dict[int, float] = msgspec.field(default_factory=dict)
    grammar: str | None = None  # GBNF; root rule is "root"
    json_schema: JsonConstraint | None = None  # the same constraint as `grammar`, as a schema, when it is one


MAX_TOP_LOGPROBS = 20  # compat(ollama): alternatives per token a request may ask for


class MediaInput(Struct, frozen=True, kw_only=True):
    """An image or audio clip inside a prompt: the encoded file exactly as the client sent it.

    It goes right before ``prompt[position]`` (``position == len(prompt)``: after the last token). The
    backend turns it into the model's own tokens (begin/end markers, image embeddings); those count
    toward ``GenerationStats.prompt_tokens``.
    """

    data: bytes
    position: int
    kind: str = "image"  # image | audio


# A reply capped at this many tokens (a title, a label, a yes or no: the side calls agents and editors make
# beside long generations) makes a short request, unless it carries media or a grammar: each loaded model
# keeps one sequence beyond num_parallel for short requests, and the batching loop favours their steps.
SHORT_REPLY_TOKENS = 32


class GenerationRequest(Struct, frozen=True, kw_only=True):
    """One sequence to generate: prompt tokens (and media between them), sampling and stopping rules."""

    prompt: list[int]
    # In ``position`` order. A backend that cannot take media raises ``CapabilityError``: it never
    # drops them, or the model would answer about an image it never saw.
    media: list[MediaInput] = msgspec.field(default_factory=list)
    sampling: SamplingParams = SamplingParams()
    num_predict: int = -1  # -1 = until a stop (the backend caps it at 10 x context)
    stop: list[str] = msgspec.field(default_factory=list)  # stop strings, never emitted
    num_keep: int = 4  # tokens kept at the start on a context shift (the core caps it below n_ctx)
    shift: bool = True  # shift the context when full instead of stopping with "length"
    logprobs: bool = False
    top_logprobs: int = 0  # 0..MAX_TOP_LOGPROBS (checked where the request's job is made)
    # Tokens the chat template puts after an answer before the next user message (end of turn, next
    # turn's header). A backend may evaluate them into the cache once the answer ends naturally, so the
    # follow-up turn reuses them; one that does not simply ignores this.
    turn_suffix: list[int] = msgspec.field(default_factory=list)

    @property
    def short(self) -> bool:
        """A short request (``SHORT_REPLY_TOKENS``): interactive work that bulk work must not hold up."""
        return (0 <= self.num_predict <= SHORT_REPLY_TOKENS and not self.media
                and self.sampling.grammar is None)


class TokenLogprob(Struct, frozen=True, kw_only=True):
    """A token with its log-probability (natural log) and its raw bytes."""

    token: int
    text: str
    bytes: list[int]
    logprob: float


class GenerationStats(Struct, frozen=True, kw_only=True):
    """Counts and timings of one generation; durations in nanoseconds."""

    prompt_tokens: int  # all prompt tokens, cached and media ones included (Ollama's prompt_eval_count)
    cached_tokens: int = 0  # prompt tokens whose KV was reused
    prompt_eval_ns: int = 0
    eval_count: int = 0  # generated tokens
    eval_ns: int = 0
    truncated: bool = False  # the prompt was truncated or shifted to fit
    draft_tokens: int = 0  # tokens guessed by speculative decoding and verified
    draft_accepted: int = 0  # of those, the ones the model agreed with


class TokenEvent(Struct, frozen=True, kw_only=True):
    """One step of a generation stream.

    `text` is the newly visible text: pieces are held back while they end in an incomplete UTF-8
    character or could still become a stop string, so `text` may be "" for some tokens. The last
    event of every stream has `finish_reason` ("stop" or "length") and `stats`; it may carry
    flushed text and no token (`token == -1`).
    """

    token: int
    text: str = ""
    logprob: TokenLogprob | None = None
    top_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stats: GenerationStats | None = None
    stop_string: str = ""  # on the last event: the request's stop string that ended the stream, if one did


class EmbeddingResult(Struct, frozen=True, kw_only=True):
    """One vector per input, with the number of tokens evaluated."""

    embeddings: list[list[float]]
    prompt_tokens: int


class RerankResult(Struct, frozen=True, kw_only=True):
    """One relevance score per document (the reranker's raw output, higher is more relevant)."""

    scores: list[float]
    prompt_tokens: int


class CancelToken:
    """Set by the core when the client is gone; backends check it between decode steps."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)
