"""Prompt assembly: chat templates (Jinja and Go), JSON schema to GBNF, tool-call and thinking parsers.

Public API (the engine and server code against these names):

- ``plan_chat(spec, job, *, gguf_template, bos_token, eos_token, count_tokens=None, num_ctx=None)
  -> PromptPlan`` and ``plan_generate(spec, job, *, gguf_template, bos_token, eos_token) -> PromptPlan``.
  ``spec`` is the request's ``corral.spec.ModelSpec`` (``template``, ``system``, ``messages``,
  ``display``, ``name``, ``renderer``, ``parser`` are read). Prompt precedence (Ollama's): a request
  ``template`` (generate), else the model's built-in RENDERER (``corral.prompts.renderers``), else
  its Go TEMPLATE, else the GGUF's Jinja ``tokenizer.chat_template``, else ``{{ .Prompt }}``. The
  output format (``corral.prompts.formats``) is the model's PARSER, else the one its template shows.
  Chat: Modelfile MESSAGEs first, then the request's; SYSTEM is inserted first
  unless the conversation already starts with a system message. With ``count_tokens`` and
  ``num_ctx`` the oldest non-system messages are dropped until the prompt fits (the last message
  is always kept; each image counts 768 tokens; ``count_tokens(text, add_bos) -> tokens``, and
  the tokens of the text that is sent come back in ``PromptPlan.tokens``). Generate: ``raw``
  sends the prompt as is; ``suffix`` renders fill-in-the-middle (``.Prompt``/``.Suffix``); otherwise
  system + MESSAGEs
  (skipped when ``context`` is given; the engine prepends the context tokens) + the prompt as one
  user turn. Raises ``TemplateError`` (bad/hostile template), ``GrammarError`` (bad ``format``),
  ``CapabilityError`` (tools/thinking/insert the model lacks), ``InvalidRequestError``.
- ``PromptPlan``: ``text``, ``add_special`` (False when the text already starts with BOS),
  ``grammar`` (GBNF or None), ``stop`` (turn-end strings the template uses), ``images``, ``think``,
  ``truncated``, ``format`` and ``new_parser()`` (the family's parser, else ``OutputParser``; both
  have ``feed``/``finish``).
- ``OutputParser.feed(text) -> ParsedDelta`` / ``.finish() -> ParsedDelta``;
  ``ParsedDelta(content, thinking, tool_calls)``. Thinking (``<think>``… or the template's markers;
  output starts inside the block when the prompt opened it) and tool calls (template tag,
  ``<tool_call>``, ``[TOOL_CALLS]``, ``<|python_tag|>``, bare Llama-3 JSON) are split out; a call is
  emitted once, whole, with a ``call_xxxxxxxx`` id and its index. Never emits a partial marker. The
  family parsers (harmony, Qwen3-Coder, DeepSeek, GLM, Kimi K2, Command-R/R7B) keep the same promises.
- ``capabilities(template, gguf_facts, projector=False, parser="") -> list[str]`` (the store calls it
  once per resolved spec) and ``check_capabilities(spec, needed)`` (raises ``CapabilityError`` with Ollama's
  wording).
- ``schema_to_gbnf(schema) -> str``, ``JSON_GBNF`` (``format: "json"``), ``grammar_for(format)``.
- ``GEMMA3_TEMPLATE``, ``GEMMA3_PARAMS``: the embedded gemma3:270m model's template and params.
- ``render_go_template(source, data)`` and ``render_jinja(source, variables)`` for direct use.
"""

from __future__ import annotations

from typing import Any

from corral.prompts.builtin import GEMMA3_PARAMS, GEMMA3_TEMPLATE
from corral.prompts.capabilities import capabilities, check_capabilities
from corral.prompts.grammar import JSON_GBNF, schema_to_gbnf
from corral.prompts.outparse import OutputParser, ParsedDelta
from corral.prompts.plan import PromptPlan, TokenCounter, grammar_for, plan_chat, plan_generate

__all__ = [
    "GEMMA3_PARAMS",
    "GEMMA3_TEMPLATE",
    "JSON_GBNF",
    "OutputParser",
    "ParsedDelta",
    "PromptPlan",
    "TokenCounter",
    "capabilities",
    "check_capabilities",
    "grammar_for",
    "plan_chat",
    "plan_generate",
    "render_go_template",
    "render_jinja",
    "schema_to_gbnf",
]


def render_go_template(source: str, data: Any) -> str:
    """Parse and execute a Go text/template with `data` as dot (TemplateError on any failure)."""
    from corral.prompts.goexec import execute
    from corral.prompts.goparse import parse

    return execute(parse(source), data)


def render_jinja(source: str, variables: dict[str, Any]) -> str:
    """Render a Jinja chat template in the sandbox with time and size limits."""
    from corral.prompts.jinja import render

    return render(source, variables)
