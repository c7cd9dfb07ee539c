"""Core chunks to the Responses object and its event sequence (output items, parts, deltas, numbers)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from corral.conversation import Message, ToolCall
from corral.jobs import Chunk
from corral.server import common
from corral.server.responses import convert
from corral.server.responses import schemas as S

Event = dict[str, Any]


def new_id(prefix: str) -> str:
    """``resp_`` / ``msg_`` / ``fc_`` / ``rs_`` / ``call_`` ids."""
    return f"{prefix}_{secrets.token_hex(12)}"


class ResponseBuilder:
    """Builds one response: the events while it streams, the whole object at the end.

    Items come out in the order the model produces them: reasoning, then the message text, then one
    function_call item per call. Each event carries ``sequence_number``; item events ``output_index``
    and part events ``content_index`` (the SDK's stream helper needs both).
    """

    def __init__(self, req: S.ResponsesRequest, plan: convert.Plan) -> None:
        self.req, self.plan = req, plan
        self.id = new_id("resp")
        self.created = common.unix_now()
        self.seq = 0
        self.items: list[S.OutputItem] = []
        self.open: S.MessageItem | S.ReasoningItem | None = None
        self.calls: list[ToolCall] = []
        self.status = "in_progress"
        self.incomplete: S.IncompleteDetails | None = None
        self.error: S.ResponseError | None = None
        self.usage: S.Usage | None = None

    # ---- the object ----------------------------------------------------------------------------
    def response(self) -> S.Response:
        r = self.req
        text = "".join(p.text for it in self.items if isinstance(it, S.MessageItem) for p in it.content)
        fmt = r.text.format if r.text and r.text.format else S.TextFormat()
        reasoning = S.Reasoning(
            effort=r.reasoning.effort if r.reasoning else None,
            summary=r.reasoning.summary if r.reasoning else None,
        )
        return S.Response(
            id=self.id,
            object="response",
            created_at=self.created,
            status=self.status,
            model=r.model,
            output=list(self.items),
            output_text=text,
            error=self.error,
            incomplete_details=self.incomplete,
            instructions=r.instructions,
            max_output_tokens=r.max_output_tokens,
            parallel_tool_calls=not self.plan.single_call,
            previous_response_id=r.previous_response_id,
            reasoning=reasoning,
            store=r.store is not False,
            temperature=r.temperature,
            top_p=r.top_p,
            text={
                "format": {
                    k: v
                    for k, v in {
                        "type": fmt.type,
                        "name": fmt.name,
                        "schema": fmt.schema,
                        "strict": fmt.strict,
                        "description": fmt.description,
                    }.items()
                    if v is not None
                }
            },
            tool_choice=r.tool_choice or "auto",
            tools=self.plan.tools,
            truncation=r.truncation or "disabled",
            metadata=dict(r.metadata or {}),
            usage=self.usage,
            prompt_cache_key=r.prompt_cache_key,
            safety_identifier=r.safety_identifier,
            user=r.user,
        )

    def assistant_turns(self) -> list[Message]:
        """The answer as core messages, for the store (previous_response_id)."""
        thinking = "".join(
            p.text for it in self.items if isinstance(it, S.ReasoningItem) for p in (it.content or it.summary)
        )
        text = "".join(p.text for it in self.items if isinstance(it, S.MessageItem) for p in it.content)
        return [Message(role="assistant", content=text, thinking=thinking, tool_calls=list(self.calls))]

    # ---- events --------------------------------------------------------------------------------
    def _ev(self, kind: str, **fields: Any) -> Event:
        self.seq += 1
        ev = {"type": kind, "sequence_number": self.seq - 1, **fields}
        if self.plan.obfuscate and "delta" in fields:
            # random padding, so an event's size does not tell the length of its delta
            ev["obfuscation"] = secrets.token_urlsafe(12)[: 16 - min(len(str(fields["delta"])), 15)]
        return ev

    def start(self) -> list[Event]:
        return [
            self._ev("response.created", response=self.response()),
            self._ev("response.in_progress", response=self.response()),
        ]

    def _close(self) -> list[Event]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = len(self.items) - 1
        out: list[Event] = []
        if isinstance(item, S.MessageItem):
            part = item.content[0]
            out.append(
                self._ev(
                    "response.output_text.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    text=part.text,
                    logprobs=[],
                )
            )
            out.append(
                self._ev(
                    "response.content_part.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
        else:
            kind = "summary" if self.plan.summary else "content"
            reasoning = (item.summary if self.plan.summary else item.content)[0]
            if kind == "summary":
                out.append(
                    self._ev(
                        "response.reasoning_summary_text.done",
                        item_id=item.id,
                        output_index=index,
                        summary_index=0,
                        text=reasoning.text,
                    )
                )
                out.append(
                    self._ev(
                        "response.reasoning_summary_part.done",
                        item_id=item.id,
                        output_index=index,
                        summary_index=0,
                        part=reasoning,
                    )
                )
            else:
                out.append(
                    self._ev(
                        "response.reasoning_text.done",
                        item_id=item.id,
                        output_index=index,
                        content_index=0,
                        text=reasoning.text,
                    )
                )
        item.status = "completed"
        if isinstance(item, S.ReasoningItem) and self.plan.encrypted:
            item.encrypted_content = "".join(p.text for p in (item.summary or item.content))
        out.append(self._ev("response.output_item.done", output_index=index, item=item))
        return out

    def _reasoning(self, text: str) -> list[Event]:
        out: list[Event] = []
        if not isinstance(self.open, S.ReasoningItem):
            out += self._close()
            part = S.ReasoningText(type="summary_text" if self.plan.summary else "reasoning_text", text="")
            item = S.ReasoningItem(id=new_id("rs"), summary=[], content=[], status="in_progress")
            self.items.append(item)
            self.open = item
            index = len(self.items) - 1
            out.append(
                self._ev(
                    "response.output_item.added",
                    output_index=index,
                    item=S.ReasoningItem(id=item.id, summary=[], content=[], status="in_progress"),
                )
            )
            if self.plan.summary:
                item.summary.append(part)
                out.append(
                    self._ev(
                        "response.reasoning_summary_part.added",
                        item_id=item.id,
                        output_index=index,
                        summary_index=0,
                        part=S.ReasoningText(type="summary_text", text=""),
                    )
                )
            else:
                item.content.append(part)
        item = self.open
        assert isinstance(item, S.ReasoningItem)
        index = len(self.items) - 1
        if self.plan.summary:
            item.summary[0].text += text
            out.append(
                self._ev(
                    "response.reasoning_summary_text.delta",
                    item_id=item.id,
                    output_index=index,
                    summary_index=0,
                    delta=text,
                )
            )
        else:
            item.content[0].text += text
            out.append(
                self._ev(
                    "response.reasoning_text.delta",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    delta=text,
                )
            )
        return out

    def _text(self, text: str) -> list[Event]:
        out: list[Event] = []
        if not isinstance(self.open, S.MessageItem):
            out += self._close()
            item = S.MessageItem(
                id=new_id("msg"),
                status="in_progress",
                role="assistant",
                content=[S.OutputText(type="output_text", text="")],
            )
            self.items.append(item)
            self.open = item
            index = len(self.items) - 1
            out.append(
                self._ev(
                    "response.output_item.added",
                    output_index=index,
                    item=S.MessageItem(id=item.id, status="in_progress", role="assistant", content=[]),
                )
            )
            out.append(
                self._ev(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    part=S.OutputText(type="output_text", text=""),
                )
            )
        item = self.open
        assert isinstance(item, S.MessageItem)
        item.content[0].text += text
        return out + [
            self._ev(
                "response.output_text.delta",
                item_id=item.id,
                output_index=len(self.items) - 1,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        ]

    def _call(self, call: ToolCall) -> list[Event]:
        out = self._close()
        args = json.dumps(call.arguments)
        call_id = call.id or new_id("call")
        item = S.FunctionCallItem(
            id=new_id("fc"), call_id=call_id, name=call.name, arguments=args, status="completed"
        )
        self.calls.append(
            ToolCall(name=call.name, arguments=call.arguments, id=call_id, index=len(self.calls))
        )
        self.items.append(item)
        index = len(self.items) - 1
        added = S.FunctionCallItem(
            id=item.id, call_id=call_id, name=call.name, arguments="", status="in_progress"
        )
        return out + [
            self._ev("response.output_item.added", output_index=index, item=added),
            self._ev(
                "response.function_call_arguments.delta", item_id=item.id, output_index=index, delta=args
            ),
            self._ev(
                "response.function_call_arguments.done",
                item_id=item.id,
                output_index=index,
                name=call.name,
                arguments=args,
            ),
            self._ev("response.output_item.done", output_index=index, item=item),
        ]

    def feed(self, c: Chunk) -> list[Event]:
        out: list[Event] = []
        if c.thinking:
            out += self._reasoning(c.thinking)
        if c.content:
            out += self._text(c.content)
        for call in c.tool_calls:
            if self.plan.single_call and self.calls:
                break  # parallel_tool_calls false: the first call only
            if self.plan.max_calls is not None and len(self.calls) >= self.plan.max_calls:
                break  # max_tool_calls: the first so many
            out += self._call(call)
        if c.done:
            out += self._close()
            m = c.metrics
            self.usage = convert.usage(m, m.thinking_count if m else 0)
            # compat(ollama, llama-server): a turn a length cap stopped is still "completed" and ends in
            # response.completed (Codex fails a turn that ends in response.incomplete, and sends no
            # max_output_tokens: the model's own num_predict ends its turns); incomplete_details keeps
            # the reason, so the cut is never silent.
            if c.done_reason == "length":
                self.incomplete = S.IncompleteDetails(reason="max_output_tokens")
            self.status = "completed"
            out.append(self._ev("response.completed", response=self.response()))
        return out

    def fail(self, message: str) -> list[Event]:
        """The last event of a stream that broke after it started."""
        out = self._close()
        self.status = "failed"
        self.error = S.ResponseError(code="server_error", message=message)
        return out + [self._ev("response.failed", response=self.response())]
