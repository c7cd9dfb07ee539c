"""Tests for corral.testing.gbnf: sampled strings match their grammar (and `matches`); bad grammars raise."""

from __future__ import annotations

import json
import re

import pytest

from corral.errors import GrammarError
from corral.testing.contract import JSON_GRAMMAR
from corral.testing.gbnf import matches, parse_gbnf, sample_grammar

FULL_JSON = r'''
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ws
# optional space
ws ::= | " " | "\n" [ \t]{0,20}
'''


@pytest.mark.parametrize("seed", range(30))
def test_full_json_grammar_gives_json(seed: int) -> None:
    assert isinstance(json.loads(sample_grammar(FULL_JSON, seed=seed)), dict)


def test_contract_grammar_and_determinism() -> None:
    out = sample_grammar(JSON_GRAMMAR, seed=5)
    assert set(json.loads(out)) == {"name", "n"}
    assert out == sample_grammar(JSON_GRAMMAR, seed=5)
    assert len({sample_grammar(JSON_GRAMMAR, seed=s) for s in range(10)}) > 1


def test_repetition_bounds_and_classes() -> None:
    for seed in range(20):
        out = sample_grammar(r'root ::= "x" [a-c]{2,3} [^a-z] "\u00e9"?', seed=seed)
        assert re.fullmatch(r"x[a-c]{2,3}[^a-z]é?", out), out


def test_recursive_grammar_terminates() -> None:
    out = sample_grammar('root ::= "(" root ")" | "x"', seed=1)
    assert out.count("(") == out.count(")") and out.endswith(")" * out.count("(")) or out == "x"


@pytest.mark.parametrize("bad", ['root ::= "open', "root ::= missing", 'other ::= "a"', "no rules",
                                 'root ::= [a-z', 'root ::= "a" )', 'root ::= root'])
def test_bad_grammars_raise(bad: str) -> None:
    with pytest.raises(GrammarError):
        sample_grammar(bad)


def test_parse_names_rules() -> None:
    assert set(parse_gbnf(FULL_JSON)) == {"root", "value", "object", "array", "string", "number", "ws"}


def test_matches_recognizes_the_language() -> None:
    rules = parse_gbnf(FULL_JSON)
    for seed in range(10):
        assert matches(rules, sample_grammar(FULL_JSON, seed=seed))
    assert matches(FULL_JSON, '{"a": [1, "x\\n", true, {}]}')  # grammar text works too
    assert not matches(rules, '{"a": 1')
    grammar = r'root ::= "x" [a-c]{2,3} [^a-z] "\u00e9"? . # trailing comment'
    assert matches(grammar, "xabZé!") and matches(grammar, "xcccZq")
    assert not matches(grammar, "xaZ!") and not matches(grammar, "xabzé!")
    assert matches('root ::= ("a"?){2} "b"', "b")  # empty repetitions count toward the minimum
    nested = 'root ::= "(" root ")" | "x"'
    assert matches(nested, "((x))") and not matches(nested, "((x)")
    with pytest.raises(GrammarError):
        matches("root ::= missing", "")
