"""Schemas compiled by llguidance mean exactly what their GBNF form means (tiny model's vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

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
