"""Properties for everything that parses untrusted input: any input gives a result or that parser's own
error (a 4xx), never another exception, and within bounded time (and, for GGUF, bounded reads)."""

from __future__ import annotations

import io
import math
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral import gguf
from corral.config import MAX_DURATION_S, parse_duration
from corral.errors import (
    GrammarError,
    InvalidModelFileError,
    InvalidModelNameError,
    InvalidRequestError,
    TemplateError,
)
from corral.names import parse_name
from corral.options import OPTIONS, check_option, parse_parameter
from corral.prompts import gotemplate, jinja
from corral.prompts.grammar import schema_to_gbnf
from corral.server.common import keep_alive
from corral.store.modelfile import parse_modelfile
from corral.testing.tinymodel import write_tiny_gguf

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner,
                                                                           max_size=4)), max_leaves=20)


@given(name=st.sampled_from(sorted(OPTIONS)), value=JSON)
def test_any_option_value_is_typed_or_a_400(name: str, value: Any) -> None:
    try:
        out = check_option(name, value)
    except InvalidRequestError:
        return
    if isinstance(out, int) and not isinstance(out, bool):
        assert -(2**63) <= out < 2**63


@given(name=st.sampled_from(sorted(OPTIONS)), text=st.lists(st.text(max_size=30), max_size=3))
def test_any_modelfile_parameter_is_typed_or_a_400(name: str, text: list[str]) -> None:
    try:
        parse_parameter(name, text)
    except InvalidRequestError:
        pass


@given(value=st.one_of(st.text(max_size=40), st.from_regex(r"-?[0-9]{1,25}(\.[0-9]+)?(ns|us|ms|s|m|h){1,3}"),
                       st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**80), 2**80)))
def test_any_duration_is_bounded_seconds_forever_or_a_400(value: Any) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        with pytest.raises(InvalidRequestError):
            keep_alive(value)
        return
    assert seconds == math.inf or 0 <= seconds <= MAX_DURATION_S
    assert keep_alive(value) == seconds


_NAMEISH = r"([a-z0-9.:-]{1,20}/){0,3}[A-Za-z0-9._-]{1,20}(:[A-Za-z0-9._-]{1,20})?"


@given(raw=st.one_of(st.text(max_size=120), st.from_regex(_NAMEISH)))
def test_any_model_name_parses_or_is_a_400(raw: str) -> None:
    try:
        name = parse_name(raw)
    except InvalidModelNameError:
        return
    assert parse_name(name.display) == name  # the display form names the same model


_MODELFILE_LINES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["FROM tiny", "FROM ./x.gguf", "PARAMETER num_ctx 4096", "PARAMETER num_ctx -1",
                     "PARAMETER stop \"<end>\"", "PARAMETER nosuch 1", "TEMPLATE \"\"\"{{ .Prompt }}\"\"\"",
                     'TEMPLATE """', 'SYSTEM """hi', "MESSAGE user hello", "MESSAGE robot hi", "LICENSE x",
                     "ADAPTER ./a.gguf", "REQUIRES 0.1", "# comment", ""]))


@given(lines=st.lists(_MODELFILE_LINES, max_size=8))
def test_any_modelfile_parses_or_is_a_400(lines: list[str]) -> None:
    try:
        parse_modelfile("\n".join(lines))
    except InvalidRequestError:
        pass


_GO_PIECES = ["{{", "}}", "{{ .Prompt }}", "{{ .System }}", "{{ if .System }}", "{{ else }}", "{{ end }}",
              "{{ range .Messages }}", "{{ .Role }}", "{{ .Content }}", "{{ range $i, $m := .Messages }}",
              "{{ $x := 1 }}", "{{ $x }}", "{{ printf \"%5d\" 1 }}", "{{ printf \"%999999999d\" 1 }}",
              "{{ range 1000000 }}", "{{ json .Tools }}", "{{ (", ")", " | ", "{{ len .Messages }}",
              "{{ index .Messages 0 }}", "{{ slice .Prompt 1 2 }}", "{{ template \"t\" . }}",
              "{{ define \"t\" }}", "{{- ", " -}}", "{{/* c */}}", "text ", "{{ break }}", "{{ eq 1 \"a\" }}"]


@given(pieces=st.lists(st.sampled_from(_GO_PIECES), max_size=14))
def test_any_go_template_renders_or_is_a_400_in_bounded_time(pieces: list[str]) -> None:
    source = "".join(pieces)
    t0 = time.monotonic()
    try:
        gotemplate.validate(source)
    except InvalidRequestError:
        pass
    assert time.monotonic() - t0 < 10.0  # four test renders of at most 2 s each


_JINJA_PIECES = ["{{ ", " }}", "{% for m in messages %}", "{% endfor %}", "{% if ", " %}", "{% endif %}",
                 "m.content", "'a'", " * ", " ** ", " + ", " ~ ", "10", "999999", "(", ")", "[1, 2]",
                 "range(100000)", "|tojson", "|join", "|string", "|list", "|indent(9999999)", ".split()",
                 "'{:>99999999}'.format(1)", "'%s' % ", "messages", "lipsum(999999)", "{% set x = ", "x",
                 "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "text"]


@given(pieces=st.lists(st.sampled_from(_JINJA_PIECES), max_size=14))
def test_any_jinja_template_renders_or_is_a_400_in_bounded_time(pieces: list[str]) -> None:
    t0 = time.monotonic()
    try:
        out = jinja.render("".join(pieces), {"messages": [{"role": "user", "content": "hello " * 100}]})
        assert len(out) <= jinja.MAX_OUTPUT_CHARS
    except TemplateError:
        pass
    assert time.monotonic() - t0 < 5.0


_SCHEMA = st.deferred(lambda: st.one_of(
    st.booleans(), JSON,
    st.fixed_dictionaries({}, optional={
        "type": st.one_of(st.sampled_from(["object", "array", "string", "integer", "number", "boolean",
                                           "null", "nonsense"]),
                          st.lists(st.sampled_from(["string", "null"]))),
        "properties": st.dictionaries(st.text(max_size=6), _SCHEMA, max_size=3),
        "items": _SCHEMA, "anyOf": st.lists(_SCHEMA, max_size=3), "enum": st.lists(JSON_SCALARS, max_size=4),
        "minItems": JSON_SCALARS, "maxItems": JSON_SCALARS, "minLength": JSON_SCALARS,
        "maxLength": JSON_SCALARS, "minimum": JSON_SCALARS, "maximum": JSON_SCALARS,
        "required": st.lists(st.text(max_size=6), max_size=3), "$ref": st.sampled_from(["#", "#/x", "y"]),
        "additionalProperties": st.one_of(st.booleans(), _SCHEMA), "format": st.text(max_size=10),
        "const": JSON_SCALARS})))


@given(schema=_SCHEMA)
def test_any_json_schema_compiles_or_is_a_400_in_bounded_time(schema: Any) -> None:
    t0 = time.monotonic()
    try:
        grammar = schema_to_gbnf(schema)
        assert grammar.startswith("root ::= ")
    except GrammarError:
        pass
    assert time.monotonic() - t0 < 3.0


class _CountingFile(io.BytesIO):
    """A file that records every read, so the reader's reads can be checked against what the file holds."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []  # (position, bytes asked for)

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        self.reads.append((self.tell(), -1 if n is None else n))
        return super().read(n)


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "t.gguf"
    write_tiny_gguf(path, n_embd=32, n_layer=1, n_ff=32)
    return Path(path).read_bytes()


def _read(data: bytes, monkeypatch: pytest.MonkeyPatch) -> _CountingFile:
    f = _CountingFile(data)
    monkeypatch.setattr(gguf, "_open_regular", lambda path: (f, len(data)))
    try:
        gguf.read_gguf_info("unused", keep_arrays=False)
    except InvalidModelFileError:
        pass
    return f


def _check_reads(f: _CountingFile, size: int) -> None:
    for pos, n in f.reads:
        assert 0 <= n <= size - pos, f"read of {n} bytes at {pos} in a {size}-byte file"
        assert n <= gguf.MAX_STRING * 8  # no single read larger than the biggest value the reader allows


@given(data=st.binary(max_size=512), version=st.sampled_from([2, 3]))
def test_random_gguf_headers_are_read_within_bounds_or_refused(data: bytes, version: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    blob = b"GGUF" + struct.pack("<I", version) + data
    _check_reads(_read(blob, monkeypatch), len(blob))


@given(edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 4096)))
def test_mutated_gguf_files_are_read_within_bounds_or_refused(tiny_bytes: bytes, edits: list[tuple[int, int]],
                                                              cut: int | None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(tiny_bytes)
    for pos, byte in edits:
        data[pos % len(data)] = byte
    blob = bytes(data if cut is None else data[:cut])
    _check_reads(_read(blob, monkeypatch), len(blob))


