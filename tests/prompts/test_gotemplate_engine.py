"""The Go text/template engine: each construct, the builtins and Ollama's functions, and its errors."""

from __future__ import annotations

import datetime as dt

import pytest

from corral.errors import TemplateError
from corral.prompts import render_go_template as render
from corral.prompts.gofuncs import Struct

DATA = {"Name": "Ann", "N": 3, "Empty": "", "L": ["a", "b", "c"], "M": {"b": 2, "a": 1}, "Zero": 0,
        "S": Struct(Role="user", Content="hi"), "Nested": {"Inner": {"X": "deep"}}, "F": 1.5, "T": True}


@pytest.mark.parametrize(("src", "out"), [
    # actions, fields, literals
    ("Hello {{ .Name }}!", "Hello Ann!"),
    ("{{ .Nested.Inner.X }}", "deep"),
    ('{{ "q\\"uo\\te\\n" }}', 'q"uo\te\n'),
    ("{{ `raw\\n` }}", "raw\\n"),
    ("{{ 42 }} {{ -7 }} {{ 1.5 }} {{ 0x1F }} {{ true }} {{ 'a' }}", "42 -7 1.5 31 true 97"),
    ("{{ .F }} {{ .T }} {{ .L }} {{ .M }}", "1.5 true [a b c] map[a:1 b:2]"),
    ("{{ .Missing }}", "<no value>"),
    ("{{ . }}", None),  # whole dot prints; checked below for no error
    # if / else if / else
    ("{{ if .Name }}yes{{ end }}", "yes"),
    ("{{ if .Empty }}yes{{ else }}no{{ end }}", "no"),
    ("{{ if .Empty }}a{{ else if .Zero }}b{{ else if .N }}c{{ else }}d{{ end }}", "c"),
    ("{{ if .S }}struct is true{{ end }}", "struct is true"),
    # range with index/element variables, else, break/continue, maps, ints
    ("{{ range .L }}<{{ . }}>{{ end }}", "<a><b><c>"),
    ("{{ range $i, $e := .L }}{{ $i }}={{ $e }};{{ end }}", "0=a;1=b;2=c;"),
    ("{{ range $e := .L }}{{ $e }}{{ end }}", "abc"),
    ("{{ range .Empty }}x{{ else }}empty{{ end }}", "empty"),
    ("{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }}", "a1b2"),
    ("{{ range $i, $e := .L }}{{ if eq $i 1 }}{{ continue }}{{ end }}{{ if eq $i 2 }}{{ break }}{{ end }}"
     "{{ $e }}{{ end }}", "a"),
    ("{{ range 3 }}{{ . }}{{ end }}", "012"),
    ("{{ range $i, $_ := .L }}{{ $.Name }}{{ end }}", "AnnAnnAnn"),
    # with / else with
    ("{{ with .Nested.Inner }}{{ .X }}{{ end }}", "deep"),
    ("{{ with .Empty }}x{{ else with .Name }}{{ . }}{{ else }}none{{ end }}", "Ann"),
    ("{{ with .Empty }}x{{ else }}none{{ end }}", "none"),
    # variables: declare, assign in an inner scope, visible after
    ('{{ $x := "a" }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}', "c"),
    ('{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}', "21"),
    # pipelines and parentheses
    ('{{ .Name | printf "%s!" }}', "Ann!"),
    ('{{ "x" | printf "%s-%s" "y" }}', "y-x"),
    ("{{ (index .L 1) }}{{ len (slice .L 1) }}", "b2"),
    ("{{ (index .Nested \"Inner\").X }}", "deep"),
    ("{{ $s := .S }}{{ $s.Role }}", "user"),
    # trim markers and comments
    ("a  {{- .Name -}}  b", "aAnnb"),
    ("a\n\n{{- /* comment */ -}}\n\nb", "ab"),
    ("a{{/* a comment */}}b", "ab"),
    ("x {{-3}}", "x -3"),  # `{{-3}}` is a number, not a trim marker
    # logic and comparison
    ("{{ and .Name .N }} {{ and .Empty .N }} {{ or .Empty .Zero .N }} {{ not .Empty }}", "3  3 true"),
    ("{{ and .Empty (index .L 99) }}ok", "ok"),  # and short-circuits: index is never evaluated
    ('{{ eq .Name "Bob" "Ann" }} {{ ne .N 3 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 1.5 2.0 }} {{ ge "b" "a" }}',
     "true false true true false true"),
    # builtins
    ("{{ len .L }} {{ len .Name }} {{ len .M }}", "3 3 2"),
    ("{{ index .M \"b\" }} {{ index .L 2 }} {{ slice .Name 1 2 }}", "2 c n"),
    ('{{ print "a" 1 2 "b" }} {{ println "x" 1 }}', "a1 2b x 1\n"),
    ('{{ printf "%d|%5s|%-4s|%q|%v|%t|%.2f|%x|%%" 7 "ab" "c" "q" .L true 3.14159 255 }}',
     '7|   ab|c   |"q"|[a b c]|true|3.14|ff|%'),
    ('{{ html "<a href=\'x\'>&</a>" }} {{ urlquery "a b&c" }} {{ js "it\'s" }}',
     "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt; a+b%26c it\\'s"),
    # Ollama's functions
    ('{{ json .M }} {{ json "<&>" }} {{ json .L }}', '{"b":2,"a":1} "\\u003c\\u0026\\u003e" ["a","b","c"]'),
    ('{{ toTypeScriptType .P }}', "string | number"),
    # define / template / block
    ('{{ define "t" }}[{{ . }}]{{ end }}{{ template "t" .Name }}{{ template "t" 1 }}', "[Ann][1]"),
    ('{{ block "b" .N }}<{{ . }}>{{ end }}', "<3>"),
])
def test_constructs(src: str, out: str | None) -> None:
    data = {**DATA, "P": {"type": ["string", "integer"]}}
    result = render(src, data)
    if out is not None:
        assert result == out


def test_current_date() -> None:
    assert render("{{ currentDate }}", {}) == dt.date.today().strftime("%Y-%m-%d")
    assert render("{{ yesterdayDate }}", {}) == (dt.date.today() - dt.timedelta(days=1)).strftime("%Y-%m-%d")


@pytest.mark.parametrize(("src", "message"), [
    ("line1\n{{ .Name ", r"template: :2: unclosed action"),
    ("a\nb\n{{ end }}", r":3: unexpected \{\{end\}\}"),
    ("{{ if .X }}\nno end", r":1: unexpected EOF"),
    ("{{ else }}", r":1: unexpected \{\{else\}\}"),
    ("\n{{ $undefined }}", r':2: undefined variable "\$undefined"'),
    ("{{ nosuchfunc 1 }}", r'function "nosuchfunc" not defined'),
    ("\n\n{{ break }}", r":3: \{\{break\}\} outside \{\{range\}\}"),
    ("{{ .Name 1 }}", r"can't give argument to non-function \.Name"),
    ("{{ index .L 5 }}", r"index out of range"),
    ("{{ .S.Nope }}", r"can't evaluate field Nope"),
    ('{{ template "nope" }}', r'no such template "nope"'),
    ("{{ ( .Name }}", r"unclosed left paren"),
    ("{{ .Name | }}", r"missing value for command"),
    ('{{ "unterminated }}', r"unterminated quoted string|unclosed action"),
    ("{{ eq .L .L }}", r"incompatible type"),
    ("{{ range .N }}{{ else }}{{ else }}{{ end }}", r"expected \{\{end\}\}"),
    ("{{/* never closed ", r"unclosed comment"),
    ("{{ range .Name }}x{{ end }}", r"range can't iterate over Ann"),
    ("{{ len 3 }}", r"len of type int"),
    ("{{ @ }}", r"unexpected '@'"),
])
def test_errors_name_the_line(src: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render(src, DATA)


def test_runaway_templates_are_bounded() -> None:
    with pytest.raises(TemplateError, match="steps"):
        render("{{ range 100000000 }}{{ end }}", {})
    with pytest.raises(TemplateError, match="template depth"):
        render('{{ define "r" }}{{ template "r" . }}{{ end }}{{ template "r" . }}', {})
    with pytest.raises(TemplateError, match="output exceeds"):
        render('{{ range $i, $_ := .L }}{{ range $.L }}{{ $.Big }}{{ end }}{{ end }}',
               {"L": list(range(100)), "Big": "x" * 10_000})
    with pytest.raises(TemplateError, match="too long"):
        render("x" * (2 << 20), {})
