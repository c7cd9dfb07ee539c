"""Core chunks to OpenAI answers: completions and SSE chunks (``n`` choices), embeddings, render-only."""

from __future__ import annotations

import base64
import json
import secrets
import struct

from corral.conversation import ToolCall
from corral.jobs import Chunk, EmbedOutput, LogprobEntry, Metrics, RenderedPrompt
from corral.server import common
from corral.server.openai import schemas as S

FINGERPRINT = "fp_corral"


def new_id(prefix: str) -> str:
    """A unique completion id (Ollama's are not unique; clients that key on them deserve better)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(metrics: list[Metrics | None]) -> S.Usage:
    """OpenAI usage over the choices of one request: the prompt counted once (every choice reads the
    same prompt, as OpenAI bills it), the completion tokens of every choice summed."""
    first = metrics[0] if metrics else None
    p = first.prompt_eval_count if first else 0
    c = sum(m.eval_count for m in metrics if m)
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


def _first_call(calls: list[ToolCall], single: bool, seen: int) -> list[ToolCall]:
    """``parallel_tool_calls: false``: the answer holds at most one tool call, the model's first."""
    return calls[: max(0, 1 - seen)] if single else calls


def chat_completion(model: str, done: list[Chunk], single_call: bool = False) -> S.ChatCompletion:
    """A non-streamed chat completion from each choice's folded core stream."""
    choices = []
    for i, c in enumerate(done):
        calls = _first_call(c.tool_calls, single_call, 0)
        msg = S.ResponseMessage(role="assistant", content=c.content,
                                reasoning_content=c.thinking or None, reasoning=c.thinking or None,
                                tool_calls=wire_calls(calls, with_index=True))
        choices.append(S.ChatChoice(index=i, message=msg, finish_reason=finish_reason(c, bool(calls)),
                                    logprobs=chat_logprobs(c.logprobs)))
    return S.ChatCompletion(
        id=new_id("chatcmpl"), object="chat.completion", created=common.unix_now(), model=model,
        system_fingerprint=FINGERPRINT, choices=choices, usage=usage([c.metrics for c in done]))


class _Choice:
    """What a stream has sent so far for one choice."""

    def __init__(self) -> None:
        self.sent_role = False
        self.calls = 0
        self.metrics: Metrics | None = None
        self.done = False
        self.offset = 0  # legacy completions: characters sent (logprob text offsets)


class ChatStream:
    """Turns core chunks into chat.completion.chunk events, following Ollama's /v1 stream shape; with
    ``n`` choices each event carries its choice's index, and the usage event waits for all of them."""

    def __init__(self, model: str, include_usage: bool, n: int = 1, single_call: bool = False) -> None:
        self.model, self.include_usage, self.single_call = model, include_usage, single_call
        self.id, self.created = new_id("chatcmpl"), common.unix_now()
        self.choices = [_Choice() for _ in range(n)]

    def _chunk(self, index: int, delta: S.Delta, finish: str | None = None,
               logprobs: S.ChoiceLogprobs | None = None) -> S.ChatCompletionChunk:
        return S.ChatCompletionChunk(id=self.id, object="chat.completion.chunk", created=self.created,
                                     model=self.model, system_fingerprint=FINGERPRINT,
                                     choices=[S.ChunkChoice(index=index, delta=delta, finish_reason=finish,
                                                            logprobs=logprobs)])

    @staticmethod
    def _role(state: _Choice) -> str | None:
        if state.sent_role:
            return None
        state.sent_role = True
        return "assistant"

    def feed(self, c: Chunk, index: int = 0) -> list[S.ChatCompletionChunk]:
        out: list[S.ChatCompletionChunk] = []
        state = self.choices[index]
        if c.thinking:
            # compat(ollama): a chunk with thinking and content is split: reasoning first.
            out.append(self._chunk(index, S.Delta(role=self._role(state), reasoning_content=c.thinking,
                                                  reasoning=c.thinking)))
        calls = _first_call(c.tool_calls, self.single_call, state.calls)
        state.calls += len(calls)
        if c.content or calls or c.logprobs or not state.sent_role:
            # compat(ollama): the first chunk carries role and content, even "".
            out.append(self._chunk(index, S.Delta(role=self._role(state), content=c.content,
                                                  tool_calls=wire_calls(calls, with_index=True)),
                                   logprobs=chat_logprobs(c.logprobs)))
        if c.done:
            state.done, state.metrics = True, c.metrics
            out.append(self._chunk(index, S.Delta(), finish=finish_reason(c, state.calls > 0)))
            if self.include_usage and all(s.done for s in self.choices):
                out.append(S.ChatCompletionChunk(
                    id=self.id, object="chat.completion.chunk", created=self.created, model=self.model,
                    system_fingerprint=FINGERPRINT, choices=[],
                    usage=usage([s.metrics for s in self.choices])))
        return out


def completion(model: str, done: list[Chunk], echo: str = "") -> S.Completion:
    """A non-streamed legacy completion; ``echo`` (the prompt, when asked) comes before each text."""
    choices = [S.CompletionChoice(text=echo + c.content, index=i, finish_reason=finish_reason(c, False),
                                  logprobs=completion_logprobs(c.logprobs, len(echo)))
               for i, c in enumerate(done)]
    return S.Completion(id=new_id("cmpl"), object="text_completion", created=common.unix_now(), model=model,
                        system_fingerprint=FINGERPRINT, choices=choices,
                        usage=usage([c.metrics for c in done]))


class CompletionStream:
    """Turns core chunks into streamed text_completion events (``n`` choices, ``echo``)."""

    def __init__(self, model: str, include_usage: bool, n: int = 1, echo: str = "") -> None:
        self.model, self.include_usage, self.echo = model, include_usage, echo
        self.id, self.created = new_id("cmpl"), common.unix_now()
        self.choices = [_Choice() for _ in range(n)]

    def _event(self, choices: list[S.CompletionChoice], usage_: S.Usage | None) -> S.Completion:
        return S.Completion(id=self.id, object="text_completion", created=self.created, model=self.model,
                            system_fingerprint=FINGERPRINT, choices=choices, usage=usage_)

    def feed(self, c: Chunk, index: int = 0) -> list[S.Completion]:
        out: list[S.Completion] = []
        state = self.choices[index]
        zero = S.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0) if self.include_usage else None
        text = c.content
        if not state.sent_role:  # the first event of a choice echoes the prompt, when asked
            state.sent_role = True
            text = self.echo + text
            state.offset = len(self.echo)
        if text or c.logprobs or not c.done:
            lp = completion_logprobs(c.logprobs, state.offset)
            state.offset += len(c.content)
            out.append(self._event([S.CompletionChoice(text=text, index=index, finish_reason=None,
                                                       logprobs=lp)], zero))
        if c.done:
            state.done, state.metrics = True, c.metrics
            out.append(self._event([S.CompletionChoice(text="", index=index,
                                                       finish_reason=finish_reason(c, False))], zero))
            if self.include_usage and all(s.done for s in self.choices):
                out.append(self._event([], usage([s.metrics for s in self.choices])))
        return out


def _debug_info(r: RenderedPrompt) -> S.DebugInfo:
    return S.DebugInfo(rendered_template=r.text, image_count=r.image_count, token_count=r.token_count)


def rendered_chat(model: str, r: RenderedPrompt) -> S.ChatCompletion:
    """``_debug_render_only`` on chat: the rendered prompt in ``_debug_info``, nothing generated."""
    msg = S.ResponseMessage(role="assistant", content="")
    return S.ChatCompletion(
        id=new_id("chatcmpl"), object="chat.completion", created=common.unix_now(), model=model,
        system_fingerprint=FINGERPRINT, choices=[S.ChatChoice(index=0, message=msg, finish_reason=None)],
        usage=S.Usage(prompt_tokens=r.token_count, completion_tokens=0, total_tokens=r.token_count),
        debug_info=_debug_info(r))


def rendered_completion(model: str, r: RenderedPrompt) -> S.Completion:
    """``_debug_render_only`` on legacy completions."""
    return S.Completion(
        id=new_id("cmpl"), object="text_completion", created=common.unix_now(), model=model,
        system_fingerprint=FINGERPRINT, choices=[S.CompletionChoice(text="", index=0, finish_reason=None)],
        usage=S.Usage(prompt_tokens=r.token_count, completion_tokens=0, total_tokens=r.token_count),
        debug_info=_debug_info(r))


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
