"""Ollama's template semantics on top of the Go-template engine: variables, legacy per-turn rendering."""

from __future__ import annotations

import functools
from typing import Any

from corral.conversation import Message, Tool, ToolCall
from corral.prompts.goexec import Limits, execute
from corral.prompts.gofuncs import JsonMap, PropertyType, Struct
from corral.prompts.goparse import Action, Branch, Command, Field, GoTemplate, Pipe, parse, walk_fields

DEFAULT_TEMPLATE = "{{ .Prompt }}"


class JsonStruct(Struct):
    """A Go struct that `json` marshals with its wire field names, not its Go names."""

    def __init__(self, go: dict[str, Any], wire: Any, type_name: str, stringer: bool = False) -> None:
        super().__init__(go)
        self.wire = wire
        self.type_name = type_name
        self.stringer = stringer


class OllamaTemplate:
    """A Modelfile TEMPLATE, parsed once; `render` follows Ollama's `template.Execute`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tree: GoTemplate = parse(source)
        self.vars = {n.lower() for f in walk_fields(self.tree.root) for n in f.names}
        for body in self.tree.defines.values():
            self.vars |= {n.lower() for f in walk_fields(body) for n in f.names}
        # compat(ollama): template.Parse appends {{ .Response }} to templates that lack both
        if "messages" not in self.vars and "response" not in self.vars:
            self.tree.root.append(Action(Pipe([Command([Field(["Response"], 0)], 0)], line=0), 0))

    @property
    def uses_messages(self) -> bool:
        return "messages" in self.vars

    def render_fim(self, prompt: str, suffix: str, think: dict[str, Any]) -> str:
        return execute(self.tree, {"Prompt": prompt, "Suffix": suffix, "Response": "", **think})

    def render(self, messages: list[Message], tools: list[Tool], think: dict[str, Any]) -> str:
        """Render a conversation: with `.Messages` once, else one run per (system, prompt, response)."""
        system, collated = collate(messages)
        limits = Limits()  # one budget for the whole render, however many turns it runs
        if self.uses_messages:
            return execute(self.tree, {
                "System": system,
                "Messages": [message_struct(m) for m in collated],
                "Tools": [tool_struct(t) for t in tools],
                "Response": "",
                **think,
            }, limits=limits)
        out: list[str] = []
        sys_, prompt, response = "", "", ""

        def flush() -> None:
            nonlocal sys_, prompt, response
            out.append(execute(self.tree, {"System": sys_, "Prompt": prompt, "Response": response, **think},
                               limits=limits))
            sys_, prompt, response = "", "", ""

        for m in collated:
            if m.role == "system":
                if prompt or response:
                    flush()
                sys_ = m.content
            elif m.role == "user":
                if response:
                    flush()
                prompt = m.content
            elif m.role == "assistant":
                response = m.content
        # the final turn stops right after {{ .Response }}, where the model takes over
        out.append(execute(self.tree, {"System": sys_, "Prompt": prompt, "Response": response, **think},
                           root=cut_after_response(self.tree.root), limits=limits))
        return "".join(out)


@functools.lru_cache(maxsize=64)
def load(source: str) -> OllamaTemplate:
    """Parse (and cache) a Go template; TemplateError names the line of a syntax error."""
    return OllamaTemplate(source)


_SAMPLE_TOOL = Tool(name="get_weather", description="Get the weather",
                    parameters={"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"]})
_SAMPLE_CALL = ToolCall(name="get_weather", arguments={"city": "Paris"}, id="call_1")


def validate(source: str) -> None:
    """Parse a Modelfile TEMPLATE and render it with sample conversations, as `create` must before
    accepting it: a broken template is refused there, with the line of the error, not at every chat."""
    tmpl = load(source)
    plain = [Message(role="system", content="You are helpful."), Message(role="user", content="Hello"),
             Message(role="assistant", content="Hi"), Message(role="user", content="Bye")]
    tools = [*plain[:2], Message(role="assistant", tool_calls=[_SAMPLE_CALL]),
             Message(role="tool", content="22C", tool_name="get_weather")]
    for think in ({}, {"Think": True, "ThinkLevel": "", "IsThinkSet": True}):
        tmpl.render(plain, [], think)
        tmpl.render(tools, [_SAMPLE_TOOL], think)


def collate(messages: list[Message]) -> tuple[str, list[Message]]:
    """Ollama's collate: all system texts joined, consecutive same-role plain messages merged."""
    system = [m.content for m in messages if m.role == "system"]
    out: list[Message] = []
    for m in messages:
        prev = out[-1] if out else None
        if (prev is not None and prev.role == m.role and m.role in ("system", "user", "assistant")
                and not prev.tool_calls and not m.tool_calls and not m.images and not prev.images):
            out[-1] = Message(role=prev.role, content=prev.content + "\n\n" + m.content,
                              thinking=prev.thinking + m.thinking)
        else:
            out.append(m)
    return "\n\n".join(system), out


def cut_after_response(nodes: list[Any]) -> list[Any]:
    """A copy of `nodes` with everything after the first `.Response` field removed (Ollama's deleteNode)."""
    cut = False

    def walk_list(ns: list[Any]) -> list[Any]:
        return [r for r in (walk(n) for n in ns) if r is not None]

    def walk(n: Any) -> Any:
        nonlocal cut
        if cut:
            return None
        if isinstance(n, Branch):
            body = walk_list(n.body)
            else_body = walk_list(n.else_body) if n.else_body is not None else None
            return Branch(n.kind, n.pipe, body, else_body, n.line)
        if isinstance(n, Action):
            pipe = walk_pipe(n.pipe)
            return None if pipe is None else Action(pipe, n.line)
        return n

    def walk_pipe(p: Pipe) -> Pipe | None:
        nonlocal cut
        cmds = []
        for c in p.cmds:
            args = []
            for a in c.args:
                if cut:
                    continue
                if isinstance(a, Field) and "Response" in a.names:
                    cut = True
                elif isinstance(a, Pipe):
                    a = walk_pipe(a)
                    if a is None:
                        continue
                args.append(a)
            if not args:
                return None
            cmds.append(Command(args, c.line))
        return Pipe(cmds, p.decl, p.assign, p.line) if cmds else None

    return walk_list(nodes)


# ---- template data: Go structs with Ollama's field names ------------------------------------------
def tool_call_struct(tc: ToolCall) -> JsonStruct:
    wire = {"id": tc.id, "function": {"index": tc.index, "name": tc.name, "arguments": tc.arguments}}
    if not tc.id:
        del wire["id"]
    fn = JsonStruct({"Index": tc.index, "Name": tc.name, "Arguments": JsonMap(tc.arguments)},
                    wire["function"], "api.ToolCallFunction")
    return JsonStruct({"ID": tc.id, "Function": fn}, wire, "api.ToolCall")


def message_struct(m: Message) -> JsonStruct:
    wire: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.thinking:
        wire["thinking"] = m.thinking
    if m.tool_calls:
        wire["tool_calls"] = [tool_call_struct(t).wire for t in m.tool_calls]
    if m.tool_name:
        wire["tool_name"] = m.tool_name
    if m.tool_call_id:
        wire["tool_call_id"] = m.tool_call_id
    return JsonStruct({
        "Role": m.role,
        "Content": m.content,
        "Thinking": m.thinking,
        "Images": list(m.images),
        "ToolCalls": [tool_call_struct(t) for t in m.tool_calls],
        "ToolName": m.tool_name,
        "ToolCallID": m.tool_call_id,
    }, wire, "*api.Message")


_PARAM_ORDER = ("type", "$defs", "items", "required", "properties")
_PROP_ORDER = ("type", "items", "description", "enum")


def _ordered(d: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    # compat(ollama): api.Tool marshals struct fields in declaration order, then what it does not know
    out = {k: d[k] for k in order if k in d}
    out.update({k: v for k, v in d.items() if k not in out})
    return out


def _property_type(t: Any) -> PropertyType:
    return PropertyType([t] if isinstance(t, str) else [x for x in t or [] if isinstance(x, str)])


def tool_struct(t: Tool) -> JsonStruct:
    params = dict(t.parameters or {})
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    props = {k: _ordered(v, _PROP_ORDER) if isinstance(v, dict) else v
             for k, v in (params.get("properties") or {}).items()}
    params["properties"] = props
    params = _ordered(params, _PARAM_ORDER)
    fn_wire: dict[str, Any] = {"name": t.name}
    if t.description:
        fn_wire["description"] = t.description
    fn_wire["parameters"] = params
    wire = {"type": t.type or "function", "function": fn_wire}
    prop_structs = {
        k: JsonStruct({"Type": _property_type(v.get("type")), "Items": v.get("items"),
                       "Description": v.get("description", ""), "Enum": v.get("enum"),
                       "AnyOf": v.get("anyOf"), "Properties": v.get("properties")},
                      v, "api.ToolProperty") if isinstance(v, dict) else v
        for k, v in props.items()
    }
    p_struct = JsonStruct({"Type": params.get("type"), "Defs": params.get("$defs"),
                           "Items": params.get("items"), "Required": params.get("required") or [],
                           "Properties": prop_structs},
                          params, "api.ToolFunctionParameters", stringer=True)
    fn = JsonStruct({"Name": t.name, "Description": t.description, "Parameters": p_struct}, fn_wire,
                    "api.ToolFunction", stringer=True)
    return JsonStruct({"Type": wire["type"], "Items": None, "Function": fn}, wire, "api.Tool", stringer=True)
