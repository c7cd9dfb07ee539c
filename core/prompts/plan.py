"""Prompt assembly for chat and generate jobs: which template, what it sees, truncation, grammar."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from corral.conversation import Message, Tool
from corral.errors import CorralError, InvalidRequestError
from corral.gbnf import prefix_rules
from corral.jobs import ChatJob, Format, GenerateJob, Think
from corral.prompts import formats, gotemplate, jinja, renderers, renderpool
from corral.prompts.capabilities import _has_suffix, missing_capability, output_format
from corral.prompts.formats import OutputFormat, StreamParser
from corral.prompts.grammar import JSON_GBNF, schema_to_gbnf, with_think_block
from corral.prompts.media import MEDIA_MARKER, place_images, place_raw_images
from corral.prompts.outparse import OutputParser
from corral.prompts.schemanorm import json_constraint
from corral.prompts.toolgrammar import tool_call_constraint, tool_call_grammar
from corral.spec import ModelSpec
from corral.types import JsonConstraint

log = logging.getLogger("corral.prompts")

IMAGE_TOKENS = 768  # compat(ollama): server/prompt.go counts each image as this many tokens
# (text, add BOS?) -> the text's tokens: what truncation counts with, and what the engine then sends
TokenCounter = Callable[[str, bool], list[int]]
# end-of-turn strings that real templates close a turn with; a model that prints one as text is done
_TURN_ENDS = ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<｜end▁of▁sentence｜>",
              "<|endoftext|>", "</s>"]


@dataclass
class PromptPlan:
    """What the engine feeds the backend for one job, and how to read what comes back."""

    text: str
    add_special: bool = True  # the tokenizer should add BOS (False when the text already has it)
    grammar: str | None = None  # GBNF from `format`
    json_schema: JsonConstraint | None = None  # the same constraint as a schema (llguidance backends)
    stop: list[str] = field(default_factory=list)  # extra stop strings the template implies
    images: list[bytes] = field(default_factory=list)  # in the order of MEDIA_MARKER in `text`
    think: bool = False  # reasoning is split out of the output
    think_markers: tuple[str, str] = ("<think>", "</think>")
    starts_thinking: bool = False  # the prompt opened the think block: output starts inside it
    tools: list[Tool] = field(default_factory=list)
    tool_tag: str = "{"
    truncated: bool = False  # history messages were dropped to fit num_ctx
    turn_suffix: str = ""  # what the template writes after an answer, up to the next user message
    tokens: list[int] | None = None  # the text's tokens when truncation already counted them
    format: OutputFormat = field(default_factory=lambda: OutputFormat("generic"))  # the family's output

    def new_parser(self) -> StreamParser:
        """A fresh streaming parser for this plan's output (thinking, tool calls, content)."""
        family = formats.new_parser(self.format, tools=self.tools, think=self.think,
                                    starts_thinking=self.think and self.starts_thinking, prompt=self.text)
        if family is not None:
            return family
        return OutputParser(
            think_markers=self.think_markers if self.think else None,
            starts_thinking=self.think and self.starts_thinking,
            tools=self.tools,
            tool_tag=self.tool_tag,
        )


# ---- shared steps ---------------------------------------------------------------------------------
def grammar_for(fmt: Format) -> str | None:
    """GBNF for a job's `format` (checked when the job was made): None, "json" or a JSON-schema object."""
    if fmt is None:
        return None
    if isinstance(fmt, dict):
        return schema_to_gbnf(fmt)
    return JSON_GBNF


def _with_think(grammar: str, raw: bool, markers: tuple[str, str], inside: bool) -> str:
    """``grammar`` after an optional think block: the model reasons first, then the grammar shapes its
    answer. A client's own GBNF gets its rules renamed first, so none can clash with the block's."""
    if raw:
        grammar = "root ::= user-root\n" + prefix_rules(grammar, "user-")
    return with_think_block(grammar, markers, inside=inside)


def _schema_for(fmt: Format, grammar: str | None, markers: tuple[str, str] | None,
                inside: bool) -> JsonConstraint | None:
    """The schema form of `format`, once ``grammar_for`` accepted it (both agree on what is refused)."""
    if grammar is None or fmt is None or fmt == "":
        return None
    return json_constraint(fmt, markers, inside)


def think_vars(think: Think, enabled: bool) -> dict[str, Any]:
    """The thinking variables of an Ollama Go template."""
    level = think if isinstance(think, str) else ""
    return {"Think": enabled, "ThinkLevel": level, "IsThinkSet": think is not None}


def _resolve_think(spec: ModelSpec, think: Think, fmt: OutputFormat) -> bool:
    """Whether the model thinks for this job (its ``think`` was checked when the job was made)."""
    wanted = think is True or isinstance(think, str)
    if wanted and not fmt.thinks:
        raise missing_capability(spec, "thinking")
    # compat(ollama): thinking-capable models think unless told not to
    return fmt.thinks and think is not False


def _think_level(think: Think, fmt: OutputFormat) -> Think:
    # compat(ollama): harmony's reasoning levels stop at high; "max" asks for the most there is
    return "high" if fmt.name == "harmony" and think == "max" else think


def _stops(src: str, fmt: OutputFormat) -> list[str]:
    return [s for s in _TURN_ENDS if s in src and s not in fmt.stops]


def _model_names(msgs: list[Message], tools: list[Tool],
                 fmt: OutputFormat) -> tuple[list[Message], list[Tool]]:
    """Tools and the history's calls under the names the model sees (harmony wants identifiers)."""
    if fmt.name != "harmony" or not (tools or any(m.tool_calls or m.tool_name for m in msgs)):
        return msgs, tools
    names = formats.harmony.ToolNames(tools)
    renamed = [msgspec.structs.replace(
        m, tool_name=names.add(m.tool_name) if m.tool_name else "",
        tool_calls=[msgspec.structs.replace(c, name=names.add(c.name)) for c in m.tool_calls])
        for m in msgs]
    return renamed, formats.rename_tools(tools)


class _Renderer:
    """Renders a message list with what wins for this model and request: its RENDERER, else a template.

    Templates are untrusted: ``render`` has a worker process render them (``renderpool``), so a slow
    or hostile one never holds this process's GIL; the worker calls ``render_here``. Built-in
    renderers are corral's own code, linear in their input, and run here.
    """

    def __init__(self, go: str | None, jinja_src: str | None, bos: str, eos: str, think: Think,
                 think_on: bool, thinks: bool = False, builtin: str = "") -> None:
        self.builtin = _known_renderer(builtin)
        if go is None and jinja_src is None:
            go = gotemplate.DEFAULT_TEMPLATE
        self.go_src = go
        self.go = gotemplate.load(go) if go is not None else None  # parse errors here, with the line
        self.jinja = jinja_src if go is None else None
        self.bos, self.eos = bos, eos
        self.think, self.think_on = think, think_on
        self.thinks = thinks  # the model can reason: its template gets enable_thinking either way

    def render(self, messages: list[Message], tools: list[Tool]) -> str:
        if self.builtin:
            text = renderers.render(self.builtin, messages, tools, think=self.think_on, bos=self.bos)
            return _cut_prefill(text, messages)
        # Image bytes stay here: a template only sees that a message has images (and how many).
        light = [msgspec.structs.replace(m, images=[b""] * len(m.images)) if m.images else m
                 for m in messages]
        job = renderpool.RenderJob(kind="chat", go=self.go_src, jinja=self.jinja, bos=self.bos, eos=self.eos,
                                   think=self.think, think_on=self.think_on, thinks=self.thinks,
                                   messages=light, tools=tools)
        return renderpool.render(job)

    def render_here(self, messages: list[Message], tools: list[Tool]) -> str:
        """Render with the template in this process (the render worker's side)."""
        if self.go is not None:
            return self.go.render(messages, tools, think_vars(self.think, self.think_on))
        return self._render_jinja(messages, tools)

    def _render_jinja(self, messages: list[Message], tools: list[Tool]) -> str:
        assert self.jinja is not None
        prefill = bool(messages) and messages[-1].role == "assistant"
        variables: dict[str, Any] = {
            "messages": [_jinja_message(m) for m in messages],
            "add_generation_prompt": not prefill,
            "bos_token": self.bos,
            "eos_token": self.eos,
        }
        if tools:  # left undefined otherwise: templates test `tools is defined` as often as `if tools`
            variables["tools"] = [_jinja_tool(t) for t in tools]
        if self.think is not None or self.thinks:
            variables["enable_thinking"] = self.think_on
            variables["thinking"] = self.think_on
            if isinstance(self.think, str):
                variables["reasoning_effort"] = self.think
        text = jinja.render_chat(self.jinja, variables.pop("messages"), variables)
        return _cut_prefill(text, messages)


def template_renderer(go: str | None, jinja_src: str | None, bos: str, eos: str, think: Think,
                      think_on: bool, thinks: bool) -> _Renderer:
    """A renderer for a Go or Jinja template (what a render worker builds from a ``RenderJob``)."""
    return _Renderer(go, jinja_src, bos, eos, think, think_on, thinks)


def _cut_prefill(text: str, messages: list[Message]) -> str:
    """Continue a final assistant message: cut what the template put after its content."""
    if messages and messages[-1].role == "assistant" and messages[-1].content:
        cut = text.rfind(messages[-1].content)
        if cut >= 0:
            text = text[: cut + len(messages[-1].content)]
    return text


@functools.lru_cache(maxsize=16)
def _known_renderer(name: str) -> str:
    """``name`` when corral has that renderer; "" (with one warning) for a name it does not know."""
    if name and name not in renderers.RENDERERS:
        log.warning("renderer %r is not built into corral; the model's template renders its prompts", name)
        return ""
    return name


def _jinja_message(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.thinking:
        d["reasoning_content"] = m.thinking
        d["thinking"] = m.thinking
    if m.tool_calls:
        d["tool_calls"] = [{"id": tc.id or f"call_{i}", "type": "function",
                            "function": {"name": tc.name, "arguments": tc.arguments}}
                           for i, tc in enumerate(m.tool_calls)]
    if m.tool_name:
        d["name"] = m.tool_name
    if m.tool_call_id:
        d["tool_call_id"] = m.tool_call_id
    return d


def _jinja_tool(t: Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": t.name, "description": t.description,
                          "parameters": t.parameters or {"type": "object", "properties": {}}}
    return {"type": t.type or "function", "function": fn}


def _strip_reasoning(m: Message, markers: tuple[str, str]) -> Message:
    """An earlier assistant turn without the reasoning a client echoed back inside its content.

    compat(ollama): done for qwen3 and deepseek-r1; models are trained on histories without it.
    """
    open_, close = markers
    head = m.content.lstrip()
    if m.role != "assistant" or not head.startswith(open_) or close not in head:
        return m
    return msgspec.structs.replace(m, content=head.split(close, 1)[1].lstrip())


def _adds_bos(text: str, bos: str) -> bool:
    """Whether the tokenizer should add BOS: not when the rendered text already starts with it."""
    return not (bos and text.startswith(bos))


def _finish(text: str, bos: str, **kw: Any) -> PromptPlan:
    return PromptPlan(text=text, add_special=_adds_bos(text, bos), **kw)


_ANSWER, _NEXT = "\x00corral-answer\x00", "\x00corral-next\x00"


def _turn_suffix(renderer: _Renderer) -> str:
    """The text a template puts between an assistant answer and the next user message.

    Read off a probe conversation rather than guessed per template family; "" when the template
    will not say (it rejects the probe, or reorders turns). Whatever follows the answer in the next
    turn's prompt starts with this text, so a backend may evaluate it ahead of time.
    """
    probe = [Message(role="user", content="hi"), Message(role="assistant", content=_ANSWER),
             Message(role="user", content=_NEXT)]
    try:
        text = renderer.render(probe, [])
    except CorralError:  # a template that rejects the probe (say, strict role order) gets no suffix
        return ""
    i, j = text.find(_ANSWER), text.find(_NEXT)
    if i < 0 or j < i:
        return ""
    return text[i + len(_ANSWER) : j]


def _answer_directly(text: str, grammar: str | None, fmt: OutputFormat) -> str:
    """With a grammar, a harmony answer starts on the final channel: the grammar shapes the answer.

    compat(ollama): like the structured-output pass of Ollama's ChatHandler, which appends this
    header; here the model skips its reasoning instead of running twice.
    """
    if grammar and fmt.name == "harmony" and text.endswith("<|start|>assistant"):
        return text + "<|channel|>final<|message|>"
    return text


def _starts_thinking(text: str, markers: tuple[str, str] | None) -> bool:
    return markers is not None and text.rstrip().endswith(markers[0])


# ---- public entry points --------------------------------------------------------------------------
def plan_chat(spec: ModelSpec, job: ChatJob, *, gguf_template: str | None, bos_token: str, eos_token: str,
              count_tokens: TokenCounter | None = None, num_ctx: int | None = None) -> PromptPlan:
    """Render a chat job's prompt (see the package docstring for the rules).

    With ``count_tokens`` and ``num_ctx`` the history is cut to fit; the tokens of the rendering that
    was sent come back in ``PromptPlan.tokens``, so the conversation is tokenized once.
    """
    go_src = spec.template or None
    jinja_src = gguf_template if not go_src else None
    fmt = output_format(spec.parser, go_src, jinja_src)
    markers = fmt.think_markers
    # compat(ollama): relax_thinking: a client that asks for thinking "if the model can" gets none on a
    # model that cannot, instead of an error
    think = None if job.think_if_supported and not fmt.thinks else job.think
    think_on = _resolve_think(spec, think, fmt)
    active = [] if job.tool_choice == "none" else list(job.tools)  # "none": the model never sees them
    if active and not fmt.tools:
        raise missing_capability(spec, "tools")
    grammar = grammar_for(job.format) or job.grammar
    if job.tool_choice == "required":
        if grammar:
            raise InvalidRequestError("a required tool call cannot be combined with a response format")
        if fmt.name == "harmony":
            raise InvalidRequestError("tool_choice required is not supported for harmony-format models")
        grammar = tool_call_grammar(active, fmt.tool_tag, job.forced_tool)
    # Strict tools the model may call (tool_choice auto): its calls follow their schemas, the text
    # around them stays free. With a format or grammar the answer is that document, never a call.
    lazy = job.strict_tools and job.tool_choice == "auto" and bool(active) and not grammar
    if lazy:
        if fmt.name == "harmony":
            raise InvalidRequestError("strict tools are not supported for harmony-format models: leave "
                                      "strict out (the calls are still parsed)")
        grammar = tool_call_grammar(active, fmt.tool_tag, lazy=True)
    renderer = _Renderer(go_src, jinja_src, bos_token, eos_token, _think_level(think, fmt), think_on,
                         fmt.thinks, builtin=spec.renderer)

    # compat(ollama): Modelfile MESSAGEs come first, then the request's; SYSTEM unless one is given
    msgs = [*spec.messages, *(msgspec.structs.replace(m, content=place_images(m.content, len(m.images)))
                              if m.images else m for m in job.messages)]
    system = spec.system
    if system and (not msgs or msgs[0].role != "system"):
        msgs.insert(0, Message(role="system", content=system))

    if markers is not None:
        msgs = [_strip_reasoning(m, markers) if i < len(msgs) - 1 else m for i, m in enumerate(msgs)]
    msgs, tools = _model_names(msgs, active, fmt)

    def window_from(i: int) -> list[Message]:
        return [m for m in msgs[:i] if m.role == "system"] + msgs[i:]

    def fitting(i: int) -> tuple[str, list[int]] | None:
        """The rendering of the window from message ``i`` and its tokens, if they fit ``num_ctx``."""
        assert count_tokens is not None and num_ctx is not None
        text = renderer.render(window_from(i), tools)
        tokens = count_tokens(text, _adds_bos(text, bos_token))
        n = len(tokens) + IMAGE_TOKENS * sum(len(m.images) for m in msgs[i:])
        return (text, tokens) if n <= num_ctx else None

    start = 0
    fitted: tuple[str, list[int]] | None = None  # the rendering that is sent, with its tokens
    if count_tokens is not None and num_ctx is not None and len(msgs) > 1:
        fitted = fitting(0)  # the common case first: the whole conversation fits
        if fitted is None:
            # The client's last message is kept whole, even split into parts: dropping some of its
            # images or text would answer a question that was not asked (the backend 400s instead).
            start = len(msgs) - 1
            while start > 0 and msgs[start].continues:
                start -= 1
            # walk back from the last message and keep every older one that still fits
            for i in range(start - 1, -1, -1):
                if msgs[i].continues:
                    continue  # a window starts at a client message's first part, never inside one
                older = fitting(i)
                if older is None:
                    break
                start, fitted = i, older
    window = window_from(start)
    text = fitted[0] if fitted is not None else renderer.render(window, tools)
    if (direct := _answer_directly(text, grammar, fmt)) != text:
        text, fitted = direct, None  # the counted tokens no longer match: the engine tokenizes again
    src = go_src or jinja_src or ""
    inside = _starts_thinking(text, markers)
    schema = _schema_for(job.format, grammar, markers if think_on else None, inside)
    if job.tool_choice == "required" or lazy:
        schema = tool_call_constraint(active, fmt.tool_tag, job.forced_tool, markers if think_on else None,
                                      inside, lazy=lazy)
    if grammar and think_on and markers is not None and not lazy:
        grammar = _with_think(grammar, job.grammar is not None, markers, inside)
    return _finish(
        text, bos_token, grammar=grammar, json_schema=schema, stop=_stops(src, fmt),
        images=[img for m in window for img in m.images], think=think_on,
        think_markers=markers or ("<think>", "</think>"), starts_thinking=inside,
        tools=active, tool_tag=fmt.tool_tag, truncated=start > 0, format=fmt,
        turn_suffix=_turn_suffix(renderer), tokens=fitted[1] if fitted is not None else None,
    )


def plan_generate(spec: ModelSpec, job: GenerateJob, *, gguf_template: str | None, bos_token: str,
                  eos_token: str) -> PromptPlan:
    """Render a generate job's prompt: raw, fill-in-the-middle, or the prompt as one user turn."""
    go_src = job.template or spec.template or None
    jinja_src = gguf_template if not go_src else None
    fmt = output_format(spec.parser, go_src, jinja_src)
    markers = fmt.think_markers
    think_on = _resolve_think(spec, job.think, fmt)
    grammar = grammar_for(job.format) or job.grammar
    common: dict[str, Any] = {"grammar": grammar, "images": list(job.images), "think": think_on,
                              "think_markers": markers or ("<think>", "</think>"), "format": fmt}
    if job.raw:
        text, common["images"] = place_raw_images(job.prompt, job.images)
        inside = _starts_thinking(job.prompt, markers)
        common["json_schema"] = _schema_for(job.format, grammar, markers if think_on else None, inside)
        return _finish(text, bos_token, starts_thinking=inside, **common)
    if job.suffix:
        if not _has_suffix(go_src):
            raise missing_capability(spec, "insert")
        gotemplate.load(go_src or gotemplate.DEFAULT_TEMPLATE)  # parse errors here, with the line
        text = renderpool.render(renderpool.RenderJob(kind="fim", go=go_src or gotemplate.DEFAULT_TEMPLATE,
                                                      prompt=job.prompt, suffix=job.suffix, think=job.think,
                                                      think_on=think_on))
        common["json_schema"] = _schema_for(job.format, grammar, None, False)
        return _finish(text, bos_token, stop=_stops(go_src or "", fmt), **common)
    renderer = _Renderer(go_src, jinja_src, bos_token, eos_token, _think_level(job.think, fmt), think_on,
                         fmt.thinks, builtin="" if job.template else spec.renderer)
    msgs: list[Message] = []
    system = job.system if job.system is not None else spec.system
    if system:
        msgs.append(Message(role="system", content=system))
    if not job.context:
        # compat(ollama): seeded MESSAGEs are skipped when the client continues from `context`
        msgs.extend(spec.messages)
    # compat(ollama): each image is a user turn of its own before the prompt's (GenerateHandler)
    msgs.extend(Message(role="user", content=MEDIA_MARKER, images=[img]) for img in job.images)
    msgs.append(Message(role="user", content=job.prompt))
    text = _answer_directly(renderer.render(msgs, []), grammar, fmt)
    inside = _starts_thinking(text, markers)
    common["json_schema"] = _schema_for(job.format, grammar, markers if think_on else None, inside)
    if grammar and think_on and markers is not None:
        common["grammar"] = _with_think(grammar, job.grammar is not None, markers, inside)
    return _finish(text, bos_token, stop=_stops(go_src or jinja_src or "", fmt), starts_thinking=inside,
                   **common)
