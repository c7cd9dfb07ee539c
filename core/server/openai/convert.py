"""OpenAI wire structs to core jobs, and core chunks to OpenAI completions, chunks and embeddings."""

from __future__ import annotations

import base64
import json
import secrets
import struct
from typing import Any

import msgspec

from corral.conversation import Message, Tool, ToolCall
from corral.errors import InvalidRequestError
from corral.jobs import ChatJob, Chunk, EmbedJob, EmbedOutput, GenerateJob, LogprobEntry, Metrics
from corral.server import common
from corral.server.fetch import is_remote
from corral.server.openai import schemas as S

FINGERPRINT = "fp_corral"
# compat(ollama): openai/openai.go maps reasoning_effort; we pass at most "high" to the prompt layer.
_EFFORT: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                  "high": "high", "max": "high", "xhigh": "high", "ultra": "high"}


def new_id(prefix: str) -> str:
    """A unique completion id (Ollama's are not unique; clients that key on them deserve better)."""
    return f"{prefix}-{secrets.token_hex(12)}"


# ---- requests ------------------------------------------------------------------------------------
def _sampling(req: S.ChatCompletionRequest | S.CompletionRequest, max_tokens: int | None) -> dict[str, Any]:
    if req.n is not None and req.n != 1:
        # One choice per request: n > 1 would multiply the work behind one queue slot.
        raise InvalidRequestError("n must be 1 (one choice per request)")
    opts: dict[str, Any] = {}
    if max_tokens is not None:
        if max_tokens < 0:
            raise InvalidRequestError("max_tokens must be a non-negative integer")
        opts["num_predict"] = max_tokens
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        value = getattr(req, key)
        if value is not None:
            opts[key] = value
    if req.stop is not None:
        opts["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    # compat(ollama): temperature and top_p default to 1.0 on /v1 when the request leaves them out.
    opts["temperature"] = 1.0 if req.temperature is None else req.temperature
    opts["top_p"] = 1.0 if not req.top_p else req.top_p
    return opts


def _think(req: S.ChatCompletionRequest) -> bool | str | None:
    effort = req.reasoning_effort or (req.reasoning.effort if req.reasoning else None)
    if effort is None:
        return None
    key = effort.strip().lower()
    if key not in _EFFORT:
        raise InvalidRequestError(
            f"invalid reasoning_effort: {effort!r} (use none, minimal, low, medium or high)")
    return _EFFORT[key]


def _format(rf: S.ResponseFormat | None) -> str | dict[str, Any] | None:
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return "json"
    if rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema is None:
            raise InvalidRequestError("response_format.json_schema.schema is required for type json_schema")
        return rf.json_schema.schema
    raise InvalidRequestError(f"invalid response_format type: {rf.type!r}")


def _arguments(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidRequestError("invalid tool call arguments: not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequestError("invalid tool call arguments: must be a JSON object")
    return value


def _image_url(part: S.ContentPart) -> str:
    img = part.image_url
    return img if isinstance(img, str) else (img.url if img else "")


def remote_image_urls(req: S.ChatCompletionRequest) -> list[str]:
    """The http(s) ``image_url``s of a request: the route fetches them (if allowed) before converting."""
    return [_image_url(p) for m in req.messages or [] if isinstance(m.content, list) for p in m.content
            if p.type == "image_url" and is_remote(_image_url(p))]


def _messages(wire: list[S.RequestMessage], fetched: dict[str, bytes]) -> list[Message]:
    out: list[Message] = []
    names_by_id: dict[str, str] = {}
    for m in wire:
        role = m.role.strip().lower()
        role = "system" if role == "developer" else role
        calls = []
        for i, c in enumerate(m.tool_calls or []):
            calls.append(ToolCall(name=c.function.name, arguments=_arguments(c.function.arguments),
                                  id=c.id or "", index=c.index if c.index is not None else i))
            if c.id:
                names_by_id[c.id] = c.function.name
        thinking = m.reasoning_content or m.reasoning or ""
        tool_name = (m.name or names_by_id.get(m.tool_call_id or "", "")) if role == "tool" else ""
        base = Message(role=role, thinking=thinking, tool_calls=calls, tool_name=tool_name,
                       tool_call_id=m.tool_call_id or "")
        if m.content is None or isinstance(m.content, str):
            out.append(msgspec.structs.replace(base, content=m.content or ""))
            continue
        # compat(ollama): each part of an array content becomes its own message with the same role.
        for part in m.content:
            if part.type == "text":
                out.append(msgspec.structs.replace(base, content=part.text or ""))
            elif part.type == "image_url":
                url = _image_url(part)
                if url in fetched:
                    out.append(msgspec.structs.replace(base, images=[fetched[url]]))
                elif url.startswith("data:"):
                    out.append(msgspec.structs.replace(base, images=[common.decode_image(url, "image_url")]))
                else:
                    raise InvalidRequestError("invalid image_url: use a base64 data URI or an http(s) URL")
            elif part.type == "input_audio":
                if part.input_audio is None or not part.input_audio.data:
                    raise InvalidRequestError("input_audio needs data (base64 audio)")
                # compat(ollama): audio travels with the images; its bytes tell which it is
                audio = common.decode_image(part.input_audio.data, "input_audio")
                out.append(msgspec.structs.replace(base, images=[audio]))
            else:
                raise InvalidRequestError(f"invalid content part type: {part.type!r}")
            base = msgspec.structs.replace(base, tool_calls=[])  # attach calls once
    return out


def chat_job(req: S.ChatCompletionRequest, fetched: dict[str, bytes] | None = None) -> ChatJob:
    """A ChatJob from /v1/chat/completions; ``fetched`` holds the bytes of its http(s) image URLs."""
    model = common.require_model(req.model)
    if not req.messages:
        raise InvalidRequestError("[] is too short - 'messages'")
    top = req.top_logprobs or 0
    tools = [Tool(name=t.function.name, description=t.function.description,
                  parameters=dict(t.function.parameters), type=t.type) for t in req.tools or []]
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    return ChatJob(model=model, messages=_messages(req.messages, fetched or {}), tools=tools,
                   format=_format(req.response_format), options=_sampling(req, max_tokens),
                   think=_think(req), logprobs=bool(req.logprobs) or top > 0,
                   top_logprobs=top)


def completion_job(req: S.CompletionRequest) -> GenerateJob:
    """A raw-free GenerateJob from /v1/completions (the template applies, as in Ollama)."""
    model = common.require_model(req.model)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequestError("prompt must be a string or a list with exactly one string")
        prompt = prompt[0]
    if prompt is None:
        raise InvalidRequestError("prompt is required")
    top = req.logprobs or 0
    return GenerateJob(model=model, prompt=prompt, suffix=req.suffix or "",
                       options=_sampling(req, req.max_tokens), logprobs=req.logprobs is not None,
                       top_logprobs=top)


def embed_job(req: S.EmbeddingRequest) -> tuple[EmbedJob, bool]:
    """An EmbedJob from /v1/embeddings and whether the answer is base64."""
    model = common.require_model(req.model)
    enc = (req.encoding_format or "float").lower()
    if enc not in ("float", "base64"):
        raise InvalidRequestError(f"invalid encoding_format: {req.encoding_format!r} (use float or base64)")
    if req.input is None:
        raise InvalidRequestError("input is required")
    inputs = [req.input] if isinstance(req.input, str) else list(req.input)
    if not inputs or any(not i for i in inputs):
        raise InvalidRequestError("invalid input: must be a non-empty string or a list of non-empty strings")
    return EmbedJob(model=model, inputs=inputs, dimensions=req.dimensions), enc == "base64"


# ---- responses -----------------------------------------------------------------------------------
def usage(m: Metrics | None) -> S.Usage:
    """OpenAI usage from core metrics."""
    p, c = (m.prompt_eval_count, m.eval_count) if m else (0, 0)
    return S.Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def finish_reason(c: Chunk, had_calls: bool) -> str:
    """``stop``/``length``, or ``tool_calls`` when the model called tools."""
    if had_calls and c.done_reason in (None, "stop"):
        return "tool_calls"
    return "length" if c.done_reason == "length" else "stop"


def wire_calls(calls: list[ToolCall], with_index: bool) -> list[S.ToolCall] | None:
    """Tool calls with JSON-string arguments, each whole."""
    if not calls:
        return None
    return [S.ToolCall(id=c.id or common.call_id(), type="function", index=c.index if with_index else None,
                       function=S.FunctionCall(name=c.name, arguments=json.dumps(c.arguments)))
            for c in calls]


def chat_logprobs(entries: list[LogprobEntry]) -> S.ChoiceLogprobs | None:
    """``{"content": [...]}`` logprobs for chat."""
    if not entries:
        return None
    return S.ChoiceLogprobs(content=[
        S.TokenLogprob(token=e.token, logprob=e.logprob, bytes=e.bytes,
                       top_logprobs=[S.TopLogprob(token=t.text, logprob=t.logprob, bytes=t.bytes)
                                     for t in e.top_logprobs])
        for e in entries])


def completion_logprobs(entries: list[LogprobEntry], offset: int = 0) -> S.CompletionLogprobs | None:
    """Legacy completion logprobs: parallel arrays."""
    if not entries:
        return None
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return S.CompletionLogprobs(tokens=[e.token for e in entries],
                                token_logprobs=[e.logprob for e in entries],
                                top_logprobs=[{t.text: t.logprob for t in e.top_logprobs} for e in entries],
                                text_offset=offsets)


def chat_completion(model: str, c: Chunk) -> S.ChatCompletion:
    """A non-streamed chat completion from the folded core stream."""
    msg = S.ResponseMessage(role="assistant", content=c.content,
                            reasoning_content=c.thinking or None, reasoning=c.thinking or None,
                            tool_calls=wire_calls(c.tool_calls, with_index=True))
    return S.ChatCompletion(
        id=new_id("chatcmpl"), object="chat.completion", created=common.unix_now(), model=model,
        system_fingerprint=FINGERPRINT,
        choices=[S.ChatChoice(index=0, message=msg, finish_reason=finish_reason(c, bool(c.tool_calls)),
                              logprobs=chat_logprobs(c.logprobs))],
        usage=usage(c.metrics))


class ChatStream:
    """Turns core chunks into chat.completion.chunk events, following Ollama's /v1 stream shape."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model, self.include_usage = model, include_usage
        self.id, self.created = new_id("chatcmpl"), common.unix_now()
        self.sent_role = False
        self.had_calls = False

    def _chunk(self, delta: S.Delta, finish: str | None = None, logprobs: S.ChoiceLogprobs | None = None,
               ) -> S.ChatCompletionChunk:
        return S.ChatCompletionChunk(id=self.id, object="chat.completion.chunk", created=self.created,
                                     model=self.model, system_fingerprint=FINGERPRINT,
                                     choices=[S.ChunkChoice(index=0, delta=delta, finish_reason=finish,
                                                            logprobs=logprobs)])

    def _role(self) -> str | None:
        if self.sent_role:
            return None
        self.sent_role = True
        return "assistant"

    def feed(self, c: Chunk) -> list[S.ChatCompletionChunk]:
        out: list[S.ChatCompletionChunk] = []
        if c.thinking:
            # compat(ollama): a chunk with thinking and content is split: reasoning first.
            out.append(self._chunk(S.Delta(role=self._role(), reasoning_content=c.thinking,
                                           reasoning=c.thinking)))
        if c.tool_calls:
            self.had_calls = True
        if c.content or c.tool_calls or c.logprobs or not self.sent_role:
            # compat(ollama): the first chunk carries role and content, even "".
            out.append(self._chunk(S.Delta(role=self._role(), content=c.content,
                                           tool_calls=wire_calls(c.tool_calls, with_index=True)),
                                   logprobs=chat_logprobs(c.logprobs)))
        if c.done:
            out.append(self._chunk(S.Delta(), finish=finish_reason(c, self.had_calls)))
            if self.include_usage:
                out.append(S.ChatCompletionChunk(id=self.id, object="chat.completion.chunk",
                                                 created=self.created, model=self.model,
                                                 system_fingerprint=FINGERPRINT, choices=[],
                                                 usage=usage(c.metrics)))
        return out


def completion(model: str, c: Chunk) -> S.Completion:
    """A non-streamed legacy completion."""
    return S.Completion(id=new_id("cmpl"), object="text_completion", created=common.unix_now(), model=model,
                        system_fingerprint=FINGERPRINT,
                        choices=[S.CompletionChoice(text=c.content, index=0,
                                                    finish_reason=finish_reason(c, False),
                                                    logprobs=completion_logprobs(c.logprobs))],
                        usage=usage(c.metrics))


class CompletionStream:
    """Turns core chunks into streamed text_completion events."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model, self.include_usage = model, include_usage
        self.id, self.created = new_id("cmpl"), common.unix_now()
        self.offset = 0

    def _event(self, choices: list[S.CompletionChoice], usage_: S.Usage | None) -> S.Completion:
        return S.Completion(id=self.id, object="text_completion", created=self.created, model=self.model,
                            system_fingerprint=FINGERPRINT, choices=choices, usage=usage_)

    def feed(self, c: Chunk) -> list[S.Completion]:
        out: list[S.Completion] = []
        zero = S.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0) if self.include_usage else None
        if c.content or c.logprobs or not c.done:
            lp = completion_logprobs(c.logprobs, self.offset)
            self.offset += len(c.content)
            out.append(self._event([S.CompletionChoice(text=c.content, index=0, finish_reason=None,
                                                       logprobs=lp)], zero))
        if c.done:
            out.append(self._event([S.CompletionChoice(text="", index=0,
                                                       finish_reason=finish_reason(c, False))], zero))
            if self.include_usage:
                out.append(self._event([], usage(c.metrics)))
        return out


def embeddings(model: str, result: EmbedOutput, b64: bool) -> S.EmbeddingList:
    """The embedding list, vectors as floats or base64 little-endian float32."""
    data = []
    for i, vec in enumerate(result.embeddings):
        value: list[float] | str = vec
        if b64:
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
        data.append(S.Embedding(object="embedding", embedding=value, index=i))
    n = result.prompt_eval_count
    return S.EmbeddingList(object="list", data=data, model=model,
                           usage=S.EmbeddingUsage(prompt_tokens=n, total_tokens=n))
