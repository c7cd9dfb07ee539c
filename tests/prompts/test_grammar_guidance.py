"""Schemas compiled by llguidance mean exactly what their GBNF form means (tiny model's vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from corral.prompts import schema_to_gbnf
from corral.prompts.schemanorm import json_constraint
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec
from corral.testing.gbnf import matches
from corral.types import LoadOptions

from .test_grammar import INVALID_DOCS, SCHEMAS, VALID_DOCS

__all__ = ["tiny_gguf", "tiny_gguf_spec"]
CPU_LIB = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"


@pytest.fixture(scope="module")
def tiny(tiny_gguf: Path):
    if not (any(CPU_LIB.glob("_llama_cpu*")) and any(CPU_LIB.glob("libllama*"))):
        pytest.skip("plugins/cpu/_lib is not built: run build_backends.py --backend cpu")
    from corral_plugins._llama import library
    from corral_plugins._llama.cpuvariant import choose_variant
    from corral_plugins._llama.guidance import Guidance
    from corral_plugins._llama.model import LlamaModel

    native = library.load(CPU_LIB, [choose_variant(CPU_LIB).path])

    model = LlamaModel(native, tiny_gguf, LoadOptions(num_ctx=256), vocab_only=True)
    yield model, Guidance(native, model)
    model.free()


def _llg_accepts(tiny, schema: dict | str, text: str) -> bool:
    model, guidance = tiny
    guide = guidance.guide(json_constraint(schema))
    assert guide is not None, "llguidance refused a schema the GBNF converter accepts"
    # The tiny vocabulary has a token for every byte (id = byte + 3): one that both grammars must take.
    for t in (b + 3 for b in text.encode()):
        if not guide.allows(t):
            return False
        guide.accept(t)
    return guide.done


@pytest.mark.parametrize(("name", "doc"), [*VALID_DOCS, *INVALID_DOCS])
def test_both_paths_agree_on_every_document(tiny, name: str, doc: object) -> None:
    schema = SCHEMAS[name]
    gbnf = schema_to_gbnf(schema)
    forms = {json.dumps(doc, separators=(",", ":"))}
    if name != "enum-mixed":  # GBNF takes object/array const values compact only; llguidance allows spaces
        forms |= {json.dumps(doc), json.dumps(doc, indent=2)}
    for text in forms:
        assert _llg_accepts(tiny, schema, text) == matches(gbnf, text), text


@pytest.mark.parametrize("text", ['{"a":1}  ', ' {"a":1}', '{\n\n"a":1}', '{"a":1}\n  ', '{ "a" : 1 }'])
def test_whitespace_is_as_bounded_as_in_gbnf(tiny, text: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert _llg_accepts(tiny, schema, text) == matches(schema_to_gbnf(schema), text)


def test_format_json_is_any_object(tiny) -> None:
    assert _llg_accepts(tiny, "json", '{"a": [1, 2.5, -3e4, "x\\n", true, null, {}]}')
    assert not _llg_accepts(tiny, "json", "[1, 2]")


@pytest.mark.parametrize(("markers", "inside", "text", "ok"), [
    (("<think>", "</think>"), False, '<think>so < a </think>\n{"a":1}', True),
    (("<think>", "</think>"), False, '{"a":1}', True),
    (("<think>", "</think>"), False, '<think>x</think> y {"a":1}', False),
    (("[THINK]", "[/THINK]"), True, 'hmm [ok]\n[/THINK]{"a":2}', True),
    (("[THINK]", "[/THINK]"), True, '{"a":2}', False),
    (("<|START_THINKING|>", "<|END_THINKING|>"), False, '<|START_THINKING|>ok<|END_THINKING|>{"a":3}', True),
])
def test_think_block_comes_before_the_answer(tiny, markers, inside: bool, text: str, ok: bool) -> None:
    from corral.prompts.grammar import with_think_block

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    model, guidance = tiny
    guide = guidance.guide(json_constraint(schema, markers, inside))
    assert guide is not None
    accepted = True
    for t in (b + 3 for b in text.encode()):
        if not guide.allows(t):
            accepted = False
            break
        guide.accept(t)
    assert (accepted and guide.done) == ok
    assert matches(with_think_block(schema_to_gbnf(schema), markers, inside=inside), text) == ok


def test_special_token_markers(tiny) -> None:
    """An open marker that is a special token is matched as that token; a close marker that is one
    leaves the schema on the GBNF path (llguidance refuses a special token right after free text)."""
    model, guidance = tiny
    start = model.tokenize("<|im_start|>", add_special=False, parse_special=True)
    assert len(start) == 1
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    guide = guidance.guide(json_constraint(schema, ("<|im_start|>", "</t>"), False))
    assert guide is not None
    for t in [*start, *(b + 3 for b in b'thinking</t>\n{"a":1}')]:
        assert guide.allows(t), t
        guide.accept(t)
    assert guide.done
    assert guidance.guide(json_constraint(schema, ("<t>", "<|im_end|>"), False)) is None


_CALL = '{"name":"get_time","arguments":{}}'
_MOVE = '{"name": "move", "arguments": {"to": 7}}'


@pytest.mark.parametrize(("tag", "text", "ok"), [
    ("{", _CALL, True),
    ("{", _MOVE + "\n", True),
    ("{", '{"name":"move","arguments":{"to":10}}', False),  # the tool's own $ref'd bounds hold
    ("{", '{"name":"get_weather","arguments":{}}', False),  # its required argument
    ("{", " " + _CALL, False),
    ("<tool_call>", f"<tool_call>{_CALL}</tool_call>", True),
    ("<tool_call>", f"<tool_call>\n{_MOVE}\n</tool_call>", True),
    ("<tool_call>", f"<tool_call> {_CALL}  </tool_call>", False),
    ("<tool_call>", f"<tool_call>  {_CALL}</tool_call>", False),
    ("<tool_call>", f"<tool_call>{_CALL}", False),
    ("<tool_call>", _CALL, False),
    ("[TOOL_CALLS]", f"[TOOL_CALLS][{_CALL}]", True),
    ("[TOOL_CALLS]", f"[TOOL_CALLS][{_MOVE} ]", True),
    ("[TOOL_CALLS]", f"[TOOL_CALLS] [{_CALL}]", False),
    ("[TOOL_CALLS]", f"[TOOL_CALLS][{_CALL},{_CALL}]", False),
    ("<|python_tag|>", f"<|python_tag|> {_MOVE}", True),
    ("<|python_tag|>", f"<|python_tag|>{_CALL}\n", True),
    ("<|python_tag|>", '<|python_tag|>{"name":"nope","arguments":{}}', False),
])
def test_tool_calls_mean_what_their_gbnf_means(tiny, tag: str, text: str, ok: bool) -> None:
    """tool_choice required compiles with llguidance: the call, in the template's syntax, exactly as
    tool_call_grammar's GBNF has it (the tools of the GBNF tests, a $ref'd argument among them)."""
    from corral.prompts.toolgrammar import tool_call_constraint, tool_call_grammar

    from .test_toolgrammar import TOOLS

    model, guidance = tiny
    guide = guidance.guide(tool_call_constraint(TOOLS, tag))
    assert guide is not None, "llguidance refused a tool call grammar"
    assert _feed(guide, text) == ok
    assert matches(tool_call_grammar(TOOLS, tag), text) == ok
    forced = guidance.guide(tool_call_constraint(TOOLS, tag, only="move"))
    assert forced is not None and _feed(forced, text) == (ok and '"move"' in text)


def test_tool_call_after_a_think_block_and_a_special_opener(tiny) -> None:
    """A thinking model reasons first, then calls; an opener that is one special token is that token."""
    from corral.prompts.grammar import with_think_block
    from corral.prompts.toolgrammar import tool_call_constraint, tool_call_grammar

    from .test_toolgrammar import TOOLS

    model, guidance = tiny
    markers = ("<think>", "</think>")
    text = f"<think>which tool? </think>\n<tool_call>{_CALL}</tool_call>"
    guide = guidance.guide(tool_call_constraint(TOOLS, "<tool_call>", markers=markers))
    assert guide is not None and _feed(guide, text)
    assert matches(with_think_block(tool_call_grammar(TOOLS, "<tool_call>"), markers, inside=False), text)
    start = model.tokenize("<|im_start|>", add_special=False, parse_special=True)
    c = msgspec.structs.replace(tool_call_constraint(TOOLS, "<tool_call>"), opener="<|im_start|>")
    guide = guidance.guide(c)
    assert guide is not None
    assert not guide.allows(b"<"[0] + 3)  # the opener is the special token, not its spelling
    for t in [*start, *(b + 3 for b in f"{_CALL}</tool_call>".encode())]:
        assert guide.allows(t), t
        guide.accept(t)
    assert guide.done


def _feed(guide, text: str) -> bool:
    for t in (b + 3 for b in text.encode()):
        if not guide.allows(t):
            return False
        guide.accept(t)
    return guide.done


@pytest.mark.parametrize("text", ['{"name":"ab', '{"na', "", '{"name": "x"}'])
def test_the_mask_holds_every_token_the_grammar_allows(tiny, text: str) -> None:
    """Where the grammar forces text, the full mask (a refused sample's fallback) still lists every
    token that spells a piece of it, as the GBNF sampler does, not only llguidance's own tokenization."""
    model, guidance = tiny
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    guide = guidance.guide(json_constraint(schema))
    assert guide is not None and _feed(guide, text) == (text == '{"name": "x"}')
    valid = [t for t in range(guide.n_vocab) if guide.allows(t)]
    assert len(valid) > 1 and guide.allowed().tolist() == valid
