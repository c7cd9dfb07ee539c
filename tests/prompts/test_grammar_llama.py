"""Every grammar the prompts layer builds is accepted by llama.cpp's own GBNF parser (tiny model, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.config import Config
from corral.errors import GrammarError
from corral.plugins import load_plugins
from corral.prompts import JSON_GBNF, schema_to_gbnf
from corral.prompts.grammar import with_think_block
from corral.selection import BackendHooks
from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec
from corral.types import CancelToken, GenerationRequest, LoadOptions, SamplingParams

from .test_grammar import SCHEMAS

__all__ = ["tiny_gguf", "tiny_gguf_spec"]
CPU_LIB = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"


@pytest.fixture(scope="module")
def tiny_hooks(tiny_gguf: Path):
    if not (any(CPU_LIB.glob("_llama_cpu*")) and any(CPU_LIB.glob("libllama*"))):
        pytest.skip("plugins/cpu/_lib is not built: run build_backends.py --backend cpu")
    hooks = BackendHooks(load_plugins(Config(load_plugins=("cpu",))), "cpu")
    handle = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=256, num_parallel=1))
    yield hooks, handle
    hooks.unload(handle)


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
