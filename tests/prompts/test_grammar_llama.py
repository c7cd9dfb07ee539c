"""Every grammar the prompts layer builds is accepted by llama.cpp's own GBNF parser (tiny model, CPU)."""

from __future__ import annotations

import pytest

from corral.errors import GrammarError
from corral.prompts import JSON_GBNF, schema_to_gbnf
from corral.prompts.grammar import with_think_block
from corral.types import CancelToken, GenerationRequest, SamplingParams

from .test_grammar import SCHEMAS


def _accepts(tiny_hooks, grammar: str) -> None:
    hooks, handle = tiny_hooks
    request = GenerationRequest(prompt=hooks.tokenize(handle, "x"), num_predict=1,
                                sampling=SamplingParams(temperature=0.0, grammar=grammar))
    events = list(hooks.generate(handle, request, CancelToken()))
    assert events[-1].finish_reason in ("stop", "length")


GRAMMARS = {
    "json": JSON_GBNF,
    **{f"schema-{k}": schema_to_gbnf(v) for k, v in SCHEMAS.items()},
    "think-json": with_think_block(JSON_GBNF, ("<think>", "</think>"), inside=False),
    "think-inside": with_think_block(schema_to_gbnf(SCHEMAS["person"]), ("[THINK]", "[/THINK]"), inside=True),
    "think-command-r": with_think_block(JSON_GBNF, ("<|START_THINKING|>", "<|END_THINKING|>"), inside=False),
}


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_llama_cpp_parses_the_grammar(tiny_hooks, name: str) -> None:
    _accepts(tiny_hooks, GRAMMARS[name])


def test_the_check_can_fail(tiny_hooks) -> None:
    with pytest.raises(GrammarError):
        _accepts(tiny_hooks, 'root ::= "unterminated')
