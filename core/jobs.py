"""What the engine is asked to do and what it streams back, independent of either wire API."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from corral.conversation import Message, Tool, ToolCall
from corral.types import TokenLogprob

# `format` as the core sees it: None, "json", or a JSON-schema object.
Format = str | dict[str, Any] | None
# `think` as the core sees it: None (model default), a bool, or "low" | "medium" | "high".
Think = bool | str | None


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


class EmbedJob(Struct, kw_only=True):
    """Embeddings for one or more inputs."""

    model: str
    inputs: list[str]
    truncate: bool = True
    dimensions: int | None = None
    normalize: bool = True
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    keep_alive: float | None = None


class Metrics(Struct, kw_only=True):
    """Ollama's metrics, nanoseconds; the OpenAI layer turns the counts into `usage`."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class Chunk(Struct, kw_only=True):
    """One streamed piece of an answer. The last chunk has ``done=True`` with reason and metrics.

    ``done_reason``: "stop", "length", "load", "unload" (and the OpenAI layer derives "tool_calls").
    """

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    logprobs: list[LogprobEntry] = msgspec.field(default_factory=list)
    done: bool = False
    done_reason: str | None = None
    metrics: Metrics | None = None
    context: list[int] | None = None  # generate only, final chunk, not for raw


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
