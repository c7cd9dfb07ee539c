"""Model capabilities (completion, embedding, rerank, tools, insert, thinking, vision), template markers."""

from __future__ import annotations

import functools
import os
import re
from typing import Any

from corral.errors import CapabilityError, CorralError, TemplateError
from corral.gguf import read_gguf_info
from corral.prompts import formats, gotemplate
from corral.prompts.goparse import Action, Branch, Field, Text, walk_fields
from corral.spec import GGUFFacts, ModelSpec

# (open, close) reasoning markers, in the order they are looked for in a template
THINK_MARKERS: list[tuple[str, str]] = [
    ("<think>", "</think>"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
    ("[THINK]", "[/THINK]"),
    ("<seed:think>", "</seed:think>"),
]
# tool-call openers recognised in any model's output, besides the one the template names
COMMON_TOOL_TAGS = ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>"]
_EMBEDDING_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder",
                    "modern-bert", "neo-bert", "roberta", "xlm-roberta", "gte"}


def template_source(template: str | None, gguf: GGUFFacts) -> tuple[str | None, str | None]:
    """(Go template, Jinja template) the model would render with; at most one is not None."""
    if template:
        return template, None
    return None, gguf.chat_template or None


def output_format(parser: str | None, go: str | None, jinja: str | None) -> formats.OutputFormat:
    """The output format a model speaks: its PARSER's, else the one its template shows."""
    return formats.select(parser, go or jinja or "", think_markers(go, jinja), _has_tools(go, jinja),
                          tool_tag(go, jinja))


def think_markers(go: str | None, jinja: str | None) -> tuple[str, str] | None:
    """The reasoning markers a template uses, or None when the model does not think."""
    src = go or jinja or ""
    for pair in THINK_MARKERS:
        if pair[0] in src and pair[1] in src:
            return pair
    if go is not None:
        try:
            tmpl = gotemplate.load(go)
        except TemplateError:
            return None
        if "think" in tmpl.vars or "thinking" in tmpl.vars and "<think>" in src:
            return THINK_MARKERS[0]
    return None


def _has_tools(go: str | None, jinja: str | None) -> bool:
    if go is not None:
        try:
            return "tools" in gotemplate.load(go).vars
        except TemplateError:
            return False
    return bool(jinja) and re.search(r"\btools\b", jinja or "") is not None


def _has_suffix(go: str | None) -> bool:
    if go is None:
        return False
    try:
        return "suffix" in gotemplate.load(go).vars
    except TemplateError:
        return False


def tool_tag(go: str | None, jinja: str | None) -> str:
    """The text that opens a tool call, as Ollama infers it: the first text inside `if .ToolCalls`.

    "{" means bare JSON objects (Llama 3 style) are tool calls.
    """
    if go is not None:
        try:
            root = gotemplate.load(go).tree.root
        except TemplateError:
            return "{"
        branch = _find_toolcalls_if(root)
        text = _first_text(branch.body) if branch else None
        if text is None:
            return "{"
        tag = text.replace("\r\n", "\n").split("{", 1)[0].strip()
        # `[TOOL_CALLS][` : the array bracket belongs to the JSON, not to the tag
        tag = tag.rstrip("[").strip() if tag.endswith("[") and len(tag) > 1 else tag
        return tag or "{"
    for tag in COMMON_TOOL_TAGS:
        if jinja and tag in jinja:
            return tag
    return "{"


def _find_toolcalls_if(nodes: list[Any]) -> Branch | None:
    for n in nodes:
        if isinstance(n, Branch):
            if n.kind == "if" and any("ToolCalls" in f.names for f in _pipe_fields(n)):
                return n
            found = _find_toolcalls_if(n.body) or _find_toolcalls_if(n.else_body or [])
            if found:
                return found
    return None


def _pipe_fields(b: Branch) -> list[Field]:
    return walk_fields([Action(b.pipe, b.line)])


def _first_text(nodes: list[Any]) -> str | None:
    for n in nodes:
        if isinstance(n, Text) and n.text.strip():
            return n.text
        if isinstance(n, Branch):
            t = _first_text(n.body)
            if t is not None:
                return t
    return None


def capabilities(template: str | None, gguf: GGUFFacts, *, projector: str | os.PathLike[str] | None = None,
                 parser: str = "") -> list[str]:
    """Ollama's capability list for a model, from its Go template (or PARSER), GGUF facts and projector
    file.

    The store calls this once when it resolves a ``ModelSpec`` (and for ``/api/show``); everything
    else reads ``ModelSpec.capabilities``.
    """
    caps: list[str] = []
    if gguf.rerank:  # a reranker: its pooled output is a relevance score, not an embedding
        return ["rerank"]
    embedding = gguf.pooling or gguf.architecture in _EMBEDDING_ARCHS
    caps.append("embedding" if embedding else "completion")
    go, jinja = template_source(template, gguf)
    fmt = output_format(parser or None, go, jinja)
    if not embedding:
        if fmt.tools:
            caps.append("tools")
        if _has_suffix(go):
            caps.append("insert")
    if not embedding:
        # Images and audio need a projector layer beside the model (llama.cpp cannot use the vision
        # tensors some GGUFs embed), one whose metadata says which encoders it has.
        caps += projector_capabilities(projector)
    if not embedding and fmt.thinks:
        caps.append("thinking")
    return caps


def projector_capabilities(path: str | os.PathLike[str] | None) -> list[str]:
    """["vision"] for a projector GGUF (``general.architecture = clip``) with a vision encoder; [] for
    no projector or a file that is not one.

    Audio encoders are not claimed: corral cannot yet bound an audio clip's decoded length before
    decoding it (MP3 has no reliable duration in its header), so audio is refused, never half-served.
    """
    if not path:
        return []
    try:
        st = os.stat(path)
    except OSError:
        return []
    return list(_projector_capabilities(str(path), st.st_ino, st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _projector_capabilities(path: str, ino: int, size: int, mtime_ns: int) -> tuple[str, ...]:
    try:
        kv = read_gguf_info(path, keep_arrays=False).kv
    except (CorralError, OSError):
        return ()
    if kv.get("general.architecture") != "clip":
        return ()
    vision = kv.get("clip.has_vision_encoder") is True and bool(
        kv.get("clip.projector_type") or kv.get("clip.vision.projector_type"))
    return ("vision",) if vision else ()


def check_capabilities(spec: ModelSpec, needed: list[str]) -> None:
    """Raise CapabilityError (Ollama's wording) for the first capability in `needed` the model lacks."""
    for cap in needed:
        if spec.has(cap):
            continue
        raise missing_capability(spec, cap)


def missing_capability(spec: ModelSpec, cap: str) -> CapabilityError:
    """The error for a capability the model lacks, in Ollama's words (thinking quotes the short name)."""
    if cap == "thinking":
        return CapabilityError(f'"{spec.display}" does not support thinking')
    return CapabilityError(f"{spec.name} does not support {cap}")
