"""Drafts under an llguidance constraint: cut where the grammar refuses them, and drafted by the
grammar where prompt lookup finds nothing (the tiny model's vocabulary: token = byte + 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.prompts import schema_to_gbnf
from corral.prompts.schemanorm import json_constraint
from corral.types import LoadOptions, SamplingParams

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def ids(text: str | bytes) -> list[int]:
    data = text.encode() if isinstance(text, str) else text
    return [b + 3 for b in data]


def text(tokens: list[int]) -> str:
    return bytes(t - 3 for t in tokens).decode()


@pytest.fixture(scope="module")
def tiny_vocab(native, tiny_gguf: Path):
    from corral_plugins._llama.guidance import Guidance
    from corral_plugins._llama.model import LlamaModel

    model = LlamaModel(native, tiny_gguf, LoadOptions(num_ctx=256), vocab_only=True)
    yield native, model, Guidance(native, model)
    model.free()


@pytest.fixture
def drafting(tiny_vocab):
    """(drafter, the inner prompt-lookup drafter, the sampler's matcher) for SCHEMA after PROMPT."""
    from corral_plugins._llama.guideddraft import GuidedDrafter
    from corral_plugins._llama.ngram import NgramDrafter
    from corral_plugins._llama.sampling import SamplerChain

    native, model, guidance = tiny_vocab
    c = json_constraint(SCHEMA)
    guide = guidance.guide(c)
    assert guide is not None
    params = SamplingParams(temperature=0.0, grammar=schema_to_gbnf(SCHEMA), json_schema=c)
    sampler = SamplerChain(native, model.vocab, guide.n_vocab, 256, params, guide=guide)
    prompt = ids('Like {"name": "Ann", "age": "12", "name": "Bo"}\n')
    inner = NgramDrafter(prompt, 16)
    drafter = GuidedDrafter(inner, sampler, prompt, ids)
    yield drafter, inner, guide
    sampler.close()


def feed(drafter, guide, piece: str) -> None:
    for t in ids(piece):
        assert guide.allows(t)
        guide.accept(t)
    drafter.extend(ids(piece))


def test_a_lookup_draft_is_cut_where_the_grammar_refuses_it(drafting):
    drafter, inner, guide = drafting
    feed(drafter, guide, '{"name": "Ann", "age": ')
    assert text(inner.propose(8)).startswith('"12"')  # lookup: what followed `"Ann", "age": ` before
    assert drafter.propose(8) == []  # the schema wants an integer here: no token of it can pass


def test_a_lookup_draft_keeps_what_the_grammar_allows(drafting):
    drafter, inner, guide = drafting
    feed(drafter, guide, '{"name": "Ann", "age')
    assert text(inner.propose(8)) == '": "12",'
    assert text(drafter.propose(8)) == '": '


def test_the_grammar_drafts_the_text_it_forces(drafting):
    drafter, inner, guide = drafting
    feed(drafter, guide, '{"name": "Bo", "')
    assert text(inner.propose(8)) == 'name": "'  # the prompt's third key: the schema refuses it
    # the next key is forced; its last token stays undrafted (it may merge with what follows)
    assert text(drafter.propose(8)) == "age"


def test_the_grammars_guesses_are_drafted_as_far_as_their_record_pays(drafting):
    """As for prompt lookup, ``pick`` (the step's cost model) sees the expected accepted tokens of
    each draft length, from how far the grammar's earlier guesses came true."""
    drafter, _, guide = drafting
    offered: list[list[float]] = []

    def pick(gains):  # draft while a token is more likely right than not
        offered.append(list(gains))
        return max((k for k in range(len(gains)) if gains[k] - gains[k - 1 if k else 0] > 0.5), default=0)

    feed(drafter, guide, '{"')
    assert drafter.propose(8, pick) == []  # no guess of this kind has come true yet
    assert offered[-1] == [0.0] * 5  # the forced key, 4 tokens
    feed(drafter, guide, 'name": "Ann", "')  # it came true
    assert text(drafter.propose(8, pick)) == "age"
    assert 0.5 < offered[-1][1] < 1.0


def test_without_a_constraint_the_lookup_draft_is_untouched(tiny_vocab):
    from corral_plugins._llama.guideddraft import GuidedDrafter
    from corral_plugins._llama.ngram import NgramDrafter
    from corral_plugins._llama.sampling import SamplerChain

    native, model, _ = tiny_vocab
    sampler = SamplerChain(native, model.vocab, int(native.lib.llama_vocab_n_tokens(model.vocab)), 256,
                           SamplingParams(temperature=0.0))
    try:
        prompt = ids("abcdefg abcdefg abc")
        drafter = GuidedDrafter(NgramDrafter(prompt, 16), sampler, prompt, ids)
        assert text(drafter.propose(4)) == text(NgramDrafter(prompt, 16).propose(4)) == "defg"
    finally:
        sampler.close()
