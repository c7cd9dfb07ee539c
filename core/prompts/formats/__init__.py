"""Model-family output formats: which one a model speaks (named by its PARSER or recognised in its template).

A format says how an answer lays out reasoning, content and tool calls. ``select`` picks one from
the model's ``parser`` (Ollama's names, and corral's own for families Ollama has no parser for) or,
failing that, from marker text in its template, as llama.cpp's common/chat.cpp recognises them.
"generic" means the template-inferred markers of ``corral.prompts.outparse`` (``<think>``-style
reasoning and JSON tool calls after the template's tag); "passthrough" parses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.conversation import Tool
from corral.prompts.formats.base import ParsedDelta, StreamParser
from corral.prompts.formats.cohere import COMMAND_R, COMMAND_R7B
from corral.prompts.formats.harmony import HarmonyParser, rename_tools
from corral.prompts.formats.sections import Layout, SectionParser
from corral.prompts.formats.tokencalls import DEEPSEEK, KIMI_K2
from corral.prompts.formats.xmlcalls import GLM, QWEN3_CODER

__all__ = ["FORMATS", "PARSER_NAMES", "OutputFormat", "ParsedDelta", "StreamParser", "new_parser",
           "rename_tools", "select"]

_LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (QWEN3_CODER, GLM, DEEPSEEK, KIMI_K2, COMMAND_R,
                                                           COMMAND_R7B)}
FORMATS = ("generic", "passthrough", "harmony", *_LAYOUTS)

# Modelfile PARSER names -> (format, thinks by default). Ollama's names where it has a parser for
# the family (model/parsers/parsers.go), corral's own otherwise.
PARSER_NAMES: dict[str, tuple[str, bool]] = {
    "harmony": ("harmony", True),
    "qwen3-coder": ("qwen3-coder", False),
    "qwen3": ("generic", False),
    "qwen3-thinking": ("generic", True),
    "deepseek3": ("deepseek", True),
    "deepseek-r1": ("deepseek", True),
    "glm-4.5": ("glm", True),
    "glm-4.6": ("glm", True),
    "glm-4.7": ("glm", True),
    "kimi-k2": ("kimi-k2", False),
    "kimi-k2-thinking": ("kimi-k2", True),
    "command-r": ("command-r", False),
    "command-r7b": ("command-r7b", True),
    "passthrough": ("passthrough", False),
}


@dataclass(frozen=True)
class OutputFormat:
    """The output format a model speaks, and what that tells about its capabilities."""

    name: str  # one of FORMATS
    think_markers: tuple[str, str] | None = None  # reasoning markers, when the model reasons in text
    thinks: bool = False  # the model can reason (harmony reasons on a channel, without markers)
    tools: bool = False  # the format has tool calls the parser extracts
    tool_tag: str = "{"  # generic only: the text that opens a JSON tool call

    @property
    def stops(self) -> tuple[str, ...]:
        """Turn-end strings that must not stop this format's answers early."""
        # harmony ends every message with <|end|>; only <|return|> and <|call|> end the answer
        return ("<|end|>",) if self.name == "harmony" else ()


def _detect(src: str) -> str:
    """The format a template's own text implies (llama.cpp's detection, common/chat.cpp)."""
    if "<|channel|>" in src and "<|message|>" in src:
        return "harmony"
    if "<|tool_calls_section_begin|>" in src:
        return "kimi-k2"
    if "tool▁calls▁begin" in src:
        return "deepseek"
    if "<|START_ACTION|>" in src:
        return "command-r7b"
    if "<|CHATBOT_TOKEN|>" in src and "Action:" in src:
        return "command-r"
    if "<arg_key>" in src and "<tool_call>" in src:
        return "glm"
    if "<function=" in src and "<parameter=" in src:
        return "qwen3-coder"
    return "generic"


def select(parser: str | None, template: str, generic_markers: tuple[str, str] | None, generic_tools: bool,
           generic_tag: str) -> OutputFormat:
    """The format for a model: its PARSER when it names one, else what its template shows.

    ``generic_*`` are what the template-inferring rules found (think markers, tool support, tag).
    """
    named = PARSER_NAMES.get(parser or "")
    name = named[0] if named else _detect(template)
    if name == "passthrough":
        return OutputFormat("passthrough")
    if name == "generic":
        markers = generic_markers
        if named is not None:  # qwen3 / qwen3-thinking: ChatML with <think> and <tool_call> JSON
            markers = ("<think>", "</think>") if named[1] else None
            return OutputFormat("generic", markers, markers is not None, True, "<tool_call>")
        return OutputFormat("generic", markers, markers is not None, generic_tools, generic_tag)
    if name == "harmony":
        return OutputFormat("harmony", None, True, True)
    layout = _LAYOUTS[name]
    # a family reasons when its template shows the markers, or when the model's PARSER says so
    thinks = layout.think is not None and (layout.think[0] in template if named is None else named[1])
    return OutputFormat(name, layout.think if thinks else None, thinks, layout.scan is not None)


def new_parser(fmt: OutputFormat, *, tools: list[Tool], think: bool, starts_thinking: bool,
               prompt: str) -> StreamParser | None:
    """A fresh streaming parser for one answer in ``fmt`` (None for generic: see outparse)."""
    if fmt.name == "harmony":
        return HarmonyParser(tools=tools, prompt=prompt)
    if fmt.name == "passthrough":
        return _Passthrough()
    layout = _LAYOUTS.get(fmt.name)
    if layout is None:
        return None
    return SectionParser(layout, tools=tools, think=think and fmt.think_markers is not None,
                         starts_thinking=starts_thinking)


class _Passthrough:
    """Everything the model writes is content."""

    def feed(self, text: str) -> ParsedDelta:
        return ParsedDelta(content=text)

    def finish(self) -> ParsedDelta:
        return ParsedDelta()
