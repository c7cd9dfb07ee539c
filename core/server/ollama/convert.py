"""Ollama wire structs to core jobs and core chunks back to Ollama wire structs."""

from __future__ import annotations

from typing import TypedDict

from corral.conversation import Message, Tool, ToolCall
from corral.errors import InvalidRequestError
from corral.jobs import (
    ChatJob,
    Chunk,
    DetokenizeJob,
    EmbedJob,
    GenerateJob,
    LogprobEntry,
    Metrics,
    RenderedPrompt,
    TokenizeJob,
)
from corral.server import common
from corral.server.ollama.schemas import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    DebugInfo,
    DetokenizeRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    GenerateResponse,
    Logprob,
    ResponseMessage,
    TokenizeRequest,
    ToolCallFunction,
    ToolCallWire,
    TopLogprob,
)


# ---- requests ------------------------------------------------------------------------------------
def generate_job(req: GenerateRequest) -> GenerateJob:
    """A GenerateJob from /api/generate, with Ollama's request checks."""
    model = common.require_model(req.model)
    return GenerateJob(
        model=model, prompt=req.prompt, suffix=req.suffix, system=req.system, template=req.template,
        context=list(req.context or []), raw=req.raw, format=req.format,
        options=common.options(req.options), keep_alive=common.keep_alive(req.keep_alive),
        think=req.think, truncate=True if req.truncate is None else req.truncate,
        shift=True if req.shift is None else req.shift, logprobs=req.logprobs or req.top_logprobs > 0,
        top_logprobs=req.top_logprobs, images=[common.decode_image(i) for i in req.images or []],
        grammar=req.grammar, load_progress=req.stream is not False,
    )


def _function_type(kind: str | None, where: str) -> None:
    if kind not in (None, "function"):
        raise InvalidRequestError(f"{where} type {kind!r} is not supported: only function")


def message(m: ChatMessage) -> Message:
    """A core Message from a wire message (roles lowercased, as Ollama does)."""
    for c in m.tool_calls or []:
        _function_type(c.type, "tool call")
    calls = [ToolCall(name=c.function.name, arguments=dict(c.function.arguments), id=c.id or "",
                      index=c.function.index if c.function.index is not None else i)
             for i, c in enumerate(m.tool_calls or [])]
    return Message(role=m.role.strip().lower(), content=m.content or "", thinking=m.thinking or "",
                   images=[common.decode_image(i, "message images") for i in m.images or []],
                   tool_calls=calls, tool_name=m.tool_name or "", tool_call_id=m.tool_call_id or "")


def chat_job(req: ChatRequest) -> ChatJob:
    """A ChatJob from /api/chat."""
    model = common.require_model(req.model)
    for t in req.tools or []:
        _function_type(t.type, "tool")
    tools = [Tool(name=t.function.name, description=t.function.description,
                  parameters=dict(t.function.parameters), type=t.type) for t in req.tools or []]
    return ChatJob(
        model=model, messages=[message(m) for m in req.messages or []], tools=tools,
        format=req.format, options=common.options(req.options),
        keep_alive=common.keep_alive(req.keep_alive), think=req.think,
        truncate=True if req.truncate is None else req.truncate,
        shift=True if req.shift is None else req.shift, logprobs=req.logprobs or req.top_logprobs > 0,
        top_logprobs=req.top_logprobs, grammar=req.grammar, load_progress=req.stream is not False,
    )


def embed_job(req: EmbedRequest) -> EmbedJob:
    """An EmbedJob from /api/embed; ``""`` or ``[]`` only loads the model."""
    model = common.require_model(req.model)
    inputs = [req.input] if isinstance(req.input, str) else list(req.input or [])
    inputs = [] if inputs == [""] else inputs
    return EmbedJob(model=model, inputs=inputs, truncate=True if req.truncate is None else req.truncate,
                    dimensions=req.dimensions, normalize=True, options=common.options(req.options),
                    keep_alive=common.keep_alive(req.keep_alive))


def tokenize_job(req: TokenizeRequest) -> TokenizeJob:
    """A TokenizeJob from /api/tokenize."""
    if req.content is None:
        raise InvalidRequestError("content is required")
    return TokenizeJob(model=common.require_model(req.model), text=req.content, add_special=req.add_special,
                       parse_special=req.parse_special, options=common.options(req.options),
                       keep_alive=common.keep_alive(req.keep_alive))


def detokenize_job(req: DetokenizeRequest) -> DetokenizeJob:
    """A DetokenizeJob from /api/detokenize."""
    if req.tokens is None:
        raise InvalidRequestError("tokens is required")
    return DetokenizeJob(model=common.require_model(req.model), tokens=req.tokens,
                         render_special=req.render_special, options=common.options(req.options),
                         keep_alive=common.keep_alive(req.keep_alive))


def embeddings_job(req: EmbeddingsRequest) -> EmbedJob:
    """An EmbedJob from the legacy /api/embeddings: one prompt, vector not normalized."""
    model = common.require_model(req.model)
    return EmbedJob(model=model, inputs=[req.prompt] if req.prompt else [], normalize=False,
                    options=common.options(req.options), keep_alive=common.keep_alive(req.keep_alive))


# ---- responses -----------------------------------------------------------------------------------
def tool_calls(calls: list[ToolCall]) -> list[ToolCallWire] | None:
    """Wire tool calls: arguments stay an object; every call gets an id and an index."""
    if not calls:
        return None
    return [ToolCallWire(id=c.id or common.call_id(),
                         function=ToolCallFunction(name=c.name, arguments=c.arguments, index=c.index))
            for c in calls]


def logprobs(entries: list[LogprobEntry]) -> list[Logprob] | None:
    """Wire logprobs: token text, log-probability, bytes and the alternatives."""
    if not entries:
        return None
    return [Logprob(token=e.token, logprob=e.logprob, bytes=e.bytes,
                    top_logprobs=[TopLogprob(token=t.text, logprob=t.logprob, bytes=t.bytes)
                                  for t in e.top_logprobs] if e.top_logprobs else None)
            for e in entries]


def debug_info(r: RenderedPrompt) -> DebugInfo:
    """``_debug_info``: the prompt as rendered, its images and its tokens."""
    return DebugInfo(rendered_template=r.text, image_count=r.image_count, token_count=r.token_count)


class _MetricFields(TypedDict):
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


def _metric_fields(m: Metrics | None) -> _MetricFields:
    """The metric fields of a chunk: 0 (so not sent: omit_defaults) on every chunk but the last."""
    m = m or Metrics()
    return _MetricFields(total_duration=m.total_duration, load_duration=m.load_duration,
                         prompt_eval_count=m.prompt_eval_count, prompt_eval_duration=m.prompt_eval_duration,
                         eval_count=m.eval_count, eval_duration=m.eval_duration)


LOADING = "loading model"  # the status of a load's progress lines


def generate_response(model: str, c: Chunk) -> GenerateResponse:
    """A /api/generate chunk from a core chunk."""
    if c.loading is not None:
        return GenerateResponse(model=model, created_at=common.now_rfc3339(), response="", done=False,
                                status=LOADING, completed=c.loading.completed, total=c.loading.total)
    return GenerateResponse(
        model=model, created_at=common.now_rfc3339(), response=c.content, done=c.done,
        thinking=c.thinking or None, done_reason=c.done_reason if c.done else None,
        context=c.context if c.done else None, tool_calls=tool_calls(c.tool_calls),
        logprobs=logprobs(c.logprobs), **_metric_fields(c.metrics),
    )


def chat_response(model: str, c: Chunk) -> ChatResponse:
    """A /api/chat chunk from a core chunk."""
    if c.loading is not None:
        return ChatResponse(model=model, created_at=common.now_rfc3339(),
                            message=ResponseMessage(role="assistant", content=""), done=False,
                            status=LOADING, completed=c.loading.completed, total=c.loading.total)
    msg = ResponseMessage(role="assistant", content=c.content, thinking=c.thinking or None,
                          tool_calls=tool_calls(c.tool_calls))
    return ChatResponse(
        model=model, created_at=common.now_rfc3339(), message=msg, done=c.done,
        done_reason=c.done_reason if c.done else None, logprobs=logprobs(c.logprobs),
        **_metric_fields(c.metrics),
    )
