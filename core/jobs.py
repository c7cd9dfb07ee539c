"""What the engine is asked to do and what it streams back, independent of either wire API."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from msgspec import Struct

from corral.conversation import Message, Tool, ToolCall
from corral.errors import InvalidRequestError
from corral.gbnf import check_gbnf
from corral.types import MAX_TOP_LOGPROBS, TokenLogprob

# `format` as the core sees it: None, "json", or a JSON-schema object.
Format = str | dict[str, Any] | None
# `think` as the core sees it: None (model default), a bool, or "low" | "medium" | "high".
Think = bool | str | None
THINK_LEVELS = ("low", "medium", "high")

# A job checks its own fields when it is made (in a wire layer's converter, the edge): every later
# step trusts them, and each rule below has this one home and one message.


def _think(value: Think) -> Think:
    """``think``: a bool or a level; "max" is taken as "high" (the strongest level we pass on)."""
    if value is None or isinstance(value, bool):
        return value
    level = value.strip().lower()
    if level == "max":
        return "high"
    if level in THINK_LEVELS:
        return level
    raise InvalidRequestError(f"invalid think value: {value!r} (use true, false, low, medium or high)")


def _format(value: Format) -> Format:
    """``format``: None/"" = free text, "json", or a JSON-schema object (also as JSON-encoded text)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        if value.strip().lower() == "json":
            return "json"
        # compat(ollama): a JSON-schema object may arrive as a JSON-encoded string
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            return decoded
    raise InvalidRequestError(f'invalid format: expected "json" or a valid JSON schema, got {value!r}')


def _grammar(value: str | None, fmt: Format) -> str | None:
    """``grammar``: raw GBNF for llama.cpp's sampler, bounded and scanned (``corral.gbnf``); it and
    ``format`` each constrain the whole answer, so a request gives one or the other."""
    if value is None or value == "":
        return None
    if fmt is not None:
        raise InvalidRequestError("grammar cannot be combined with format: each constrains the whole answer")
    check_gbnf(value)
    return value


MAX_LOGIT_BIAS = 1024  # token ids one request may bias (OpenAI allows 300; llama.cpp copies them all)


def _logit_bias(value: dict[int, float]) -> dict[int, float]:
    """``logit_bias``: token id -> a bias added to its logit, -100..100 as OpenAI defines it (-100 in
    practice bans the token, 100 forces it); whether each id is in the vocabulary is the backend's check."""
    if len(value) > MAX_LOGIT_BIAS:
        raise InvalidRequestError(f"logit_bias holds {len(value)} tokens; the limit is {MAX_LOGIT_BIAS}")
    for token, bias in value.items():
        if token < 0:
            raise InvalidRequestError(f"logit_bias: token id {token} must be a non-negative integer")
        if not (isinstance(bias, int | float) and -100 <= bias <= 100):
            raise InvalidRequestError(
                f"logit_bias: the bias of token {token} must be a number from -100 to 100")
    return value


def _top_logprobs(value: int) -> int:
    if not 0 <= value <= MAX_TOP_LOGPROBS:
        raise InvalidRequestError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    return value


class GenerateJob(Struct, kw_only=True):
    """A completion: Ollama's /api/generate, OpenAI's /v1/completions."""

    model: str
    prompt: str = ""
    suffix: str = ""
    system: str | None = None  # None = the model's SYSTEM
    template: str | None = None  # override of the model's template
    context: list[int] = msgspec.field(default_factory=list)  # deprecated continuation tokens
    raw: bool = False
    format: Format = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)  # Ollama option names
    keep_alive: float | None = None  # seconds; inf = forever; None = server default
    think: Think = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    images: list[bytes] = msgspec.field(default_factory=list)
    grammar: str | None = None  # raw GBNF (llama.cpp's grammar sampler), instead of ``format``
    logit_bias: dict[int, float] = msgspec.field(default_factory=dict)  # token id -> bias, -100..100
    # empty prompt / messages only: stream the model's load progress before the final chunk
    load_progress: bool = False

    def __post_init__(self) -> None:
        if self.raw and (self.template or self.system or self.context):
            # compat(ollama): routes.go GenerateHandler.
            raise InvalidRequestError("raw mode does not support template, system, or context")
        if self.suffix and self.images:  # the fill-in-the-middle template has no place for images
            raise InvalidRequestError("images cannot be combined with suffix (fill-in-the-middle)")
        self.think = _think(self.think)
        self.format = _format(self.format)
        self.grammar = _grammar(self.grammar, self.format)
        _logit_bias(self.logit_bias)
        _top_logprobs(self.top_logprobs)


class ChatJob(Struct, kw_only=True):
    """A chat turn: Ollama's /api/chat, OpenAI's /v1/chat/completions."""

    model: str
    messages: list[Message] = msgspec.field(default_factory=list)
    tools: list[Tool] = msgspec.field(default_factory=list)
    format: Format = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    keep_alive: float | None = None
    think: Think = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    # "auto" (the model decides), "required" (it must call a tool: a grammar forces one, ``forced_tool``
    # when set) or "none" (the tools are left out of the prompt and the parser).
    tool_choice: str = "auto"
    forced_tool: str = ""
    # OpenAI ``strict`` tools: with tool_choice auto, a call the model opens must follow the tools'
    # schemas (a lazy constraint: the text around calls stays free)
    strict_tools: bool = False
    think_if_supported: bool = False  # ``think`` applies only when the model can think (else: None)
    grammar: str | None = None  # raw GBNF (llama.cpp's grammar sampler), instead of ``format``
    logit_bias: dict[int, float] = msgspec.field(default_factory=dict)  # token id -> bias, -100..100
    # empty prompt / messages only: stream the model's load progress before the final chunk
    load_progress: bool = False

    def __post_init__(self) -> None:
        self.think = _think(self.think)
        self.format = _format(self.format)
        self.grammar = _grammar(self.grammar, self.format)
        _logit_bias(self.logit_bias)
        _top_logprobs(self.top_logprobs)
        if self.grammar and self.tool_choice == "required":
            raise InvalidRequestError("grammar cannot be combined with a required tool call: each constrains "
                                      "the whole answer")
        if self.tool_choice not in ("auto", "none", "required"):
            raise InvalidRequestError(f"invalid tool_choice {self.tool_choice!r}: use auto, none or required")
        if self.forced_tool and self.tool_choice != "required":
            raise InvalidRequestError("a named tool can only be forced with tool_choice required")


MAX_EMBED_INPUTS = 2048  # per request, as OpenAI's embeddings API allows; bounds one request's work


class EmbedJob(Struct, kw_only=True):
    """Embeddings for one or more inputs."""

    model: str
    inputs: list[str]
    truncate: bool = True
    dimensions: int | None = None
    normalize: bool = True
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    keep_alive: float | None = None

    def __post_init__(self) -> None:
        if self.dimensions is not None and self.dimensions < 1:
            raise InvalidRequestError("dimensions must be a positive integer")
        if len(self.inputs) > MAX_EMBED_INPUTS:
            raise InvalidRequestError(f"too many inputs: {len(self.inputs)} (at most {MAX_EMBED_INPUTS} per "
                                      "request; split them over several requests)")


class TokenizeJob(Struct, kw_only=True):
    """Text to a model's token ids."""

    model: str
    text: str
    add_special: bool = True  # BOS/EOS as the model adds them
    parse_special: bool = True  # control-token text becomes that token
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    keep_alive: float | None = None


class DetokenizeJob(Struct, kw_only=True):
    """A model's token ids back to text."""

    model: str
    tokens: list[int]
    render_special: bool = True  # control tokens appear as their text
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    keep_alive: float | None = None


class RerankJob(Struct, kw_only=True):
    """Relevance of each document to a query, by a reranker model (pooling ``rank``)."""

    model: str
    query: str
    documents: list[str]
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    keep_alive: float | None = None

    def __post_init__(self) -> None:
        if not self.documents:
            raise InvalidRequestError("documents must be a non-empty list of strings")


class RerankOutput(Struct, kw_only=True):
    """One score per document, in the documents' order (the wire layers sort and cut)."""

    scores: list[float]
    prompt_eval_count: int = 0
    total_duration: int = 0
    load_duration: int = 0


class RenderedPrompt(Struct, kw_only=True):
    """A job's prompt exactly as the model would be given it, rendered without generating."""

    text: str
    token_count: int  # the tokens of ``text`` (the embedding tokens of its images are not included)
    image_count: int = 0


class Metrics(Struct, kw_only=True):
    """Ollama's metrics, nanoseconds; the OpenAI layer turns the counts into `usage`."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0  # every prompt token, the reused (cached) ones included
    prompt_cached_count: int = 0  # prompt tokens whose KV cache was reused from an earlier request
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    draft_count: int = 0  # tokens speculative decoding guessed (corral's /metrics, not Ollama's wire)
    draft_accepted: int = 0  # of those, the ones the model agreed with
    thinking_count: int = 0  # generated tokens that were reasoning (inside the think block)


class LoadProgress(Struct, frozen=True, kw_only=True):
    """How far a model's load has got: ``completed`` of the ``total`` bytes of its weights file."""

    completed: int
    total: int


class Chunk(Struct, kw_only=True):
    """One streamed piece of an answer. The last chunk has ``done=True`` with reason and metrics.

    ``done_reason``: "stop", "length", "load", "unload" (and the OpenAI layer derives "tool_calls").
    A load-only job that asked for ``load_progress`` gets chunks with only ``loading`` set first.
    """

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    logprobs: list[LogprobEntry] = msgspec.field(default_factory=list)
    done: bool = False
    done_reason: str | None = None
    metrics: Metrics | None = None
    context: list[int] | None = None  # generate only, final chunk, not for raw
    stop_string: str = ""  # final chunk: the stop string that ended the answer, if one did
    loading: LoadProgress | None = None  # a progress chunk of a load-only job (nothing else is set)


class LogprobEntry(Struct, kw_only=True):
    """A generated token's log-probability with its most likely alternatives."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TokenLogprob] = msgspec.field(default_factory=list)


class EmbedOutput(Struct, kw_only=True):
    """Embeddings with Ollama's metrics."""

    embeddings: list[list[float]]
    prompt_eval_count: int = 0
    total_duration: int = 0
    load_duration: int = 0
