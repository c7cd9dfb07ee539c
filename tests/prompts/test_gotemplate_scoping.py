"""Variables, `$` and dot in the Go template engine, case by case as Go's text/template defines them.

The cases follow the rules of text/template's documentation ("Variables") and the behaviour its own
exec and parse tests pin down: a variable's scope extends to the {{end}} of the control structure
where it is declared; `$` is the data passed to Execute; `:=` declares, `=` assigns the nearest
existing variable; range and with rebind dot; a variable is checked while parsing.
"""

from __future__ import annotations

import pytest

from corral.errors import TemplateError
from corral.prompts import render_go_template as render
from corral.prompts.gofuncs import Struct

MSGS = [Struct(Role="system", Content="sys"), Struct(Role="user", Content="hi"),
        Struct(Role="assistant", Content="yo")]
DATA = {"Tools": ["t"], "NoTools": [], "Messages": MSGS, "SI": [3, 4, 5], "I": 17, "Empty": "",
        "M": {"one": 1, "two": 2}, "S": Struct(Role="user", Content="hi")}


@pytest.mark.parametrize(("src", "out"), [
    # declaration and use
    ("{{$x := 0}}{{$x}}", "0"),
    ("{{$x := .I}}{{$x}}", "17"),
    ("{{$}}", None),  # `$` is the whole data; printed, no error
    ("{{$.I}}", "17"),
    # a variable lives until the {{end}} of the structure that declares it, not of the action
    ("{{$x := 1}}{{if true}}{{$x := 2}}{{$x}}{{end}}{{$x}}", "21"),
    ("{{$x := 1}}{{with .I}}{{$x := .}}{{$x}}{{end}}{{$x}}", "171"),
    ("{{if true}}{{$x := 1}}{{if true}}{{$x}}{{end}}{{$x}}{{end}}", "11"),
    ("{{with $x := .I}}{{$x}}{{end}}", "17"),
    ("{{if $x := .Empty}}yes{{else}}[{{$x}}]{{end}}", "[]"),  # the pipeline's variable reaches else
    # `=` assigns the nearest variable of that name, in any enclosing scope
    ("{{$x := 0}}{{if true}}{{$x = 1}}{{end}}{{$x}}", "1"),
    ("{{$x := \"a\"}}{{range .SI}}{{$x = .}}{{end}}{{$x}}", "5"),
    ("{{$x := 1}}{{with true}}{{$x := 2}}{{$x = 3}}{{$x}}{{end}}{{$x}}", "31"),  # the inner one
    ("{{$x := 1}}{{$x := 2}}{{$x}}", "2"),
    # range: one variable is the element, two are (index, element); both reset every iteration
    ("{{range $x := .SI}}<{{$x}}>{{end}}", "<3><4><5>"),
    ("{{range $i, $x := .SI}}<{{$i}}={{$x}}>{{end}}", "<0=3><1=4><2=5>"),
    ("{{range $k, $v := .M}}{{$k}}={{$v}};{{end}}", "one=1;two=2;"),
    ("{{range $x := .SI}}<{{$foo := $x}}{{$x}}{{$foo}}>{{end}}", "<33><44><55>"),
    ("{{range .SI}}{{$x := .}}{{$x}}{{end}}", "345"),
    ("{{$i := 9}}{{$x := 9}}{{range $i, $x = .SI}}{{end}}{{$i}}{{$x}}", "25"),  # `=` in range assigns
    # range and with rebind dot; `$` stays the root everywhere
    ("{{range .SI}}{{.}}{{$.I}}{{end}}", "317417517"),
    ("{{with .S}}{{.Role}}{{$.I}}{{end}}", "user17"),
    ("{{range .Messages}}{{with .Content}}{{.}}{{end}}{{end}}", "syshiyo"),
    ("{{range $m := .Messages}}{{if eq .Role \"user\"}}{{$m.Content}}{{end}}{{end}}", "hi"),
    # a variable then a field, with a space: two arguments (the field is on dot), not `$x.Field`
    ("{{$t := \"x\"}}{{range .Messages}}{{if and $t .Content}}[{{.Content}}]{{end}}{{end}}", "[sys][hi][yo]"),
    ("{{$t := .I}}{{range .Messages}}{{print $t .Role}}{{end}}", "17system17user17assistant"),
    ("{{$m := .S}}{{$m.Role}}{{ $m.Content }}", "userhi"),
    ("{{(index .Messages 1).Content}} {{print (index .SI 0) .I}}", "hi 3 17"),
    # the case: a variable set inside {{if .Tools}} read around .Content later
    ("{{- $last := \"\" }}{{ if .Tools }}{{ $last = \"tools\" }}{{ end }}"
     "{{ range .Messages }}{{ if $last }}{{ .Content }}/{{ $last }} {{ end }}{{ end }}",
     "sys/tools hi/tools yo/tools "),
    ("{{- $hasTools := false }}{{ if .NoTools }}{{ $hasTools = true }}{{ end }}"
     "{{ range .Messages }}{{ if $hasTools }}T{{ else }}{{ .Content }}{{ end }}{{ end }}", "syshiyo"),
    # {{template}} runs with a fresh set: only `$`, which is the argument
    ("{{define \"t\"}}[{{$}}|{{.}}]{{end}}{{$x := 1}}{{template \"t\" 2}}{{$x}}", "[2|2]1"),
    ("{{define \"t\"}}{{$y := 5}}{{$y}}{{end}}{{$y := 1}}{{template \"t\"}}{{$y}}", "51"),
])
def test_go_scoping(src: str, out: str | None) -> None:
    result = render(src, DATA)
    if out is not None:
        assert result == out


@pytest.mark.parametrize(("src", "message"), [
    # Go's parser rejects a variable used outside the structure that declared it
    ("{{with $x := 4}}{{end}}{{$x}}", r'undefined variable "\$x"'),
    ("{{if true}}{{$x := 1}}{{end}}{{$x}}", r'undefined variable "\$x"'),
    ("{{range $i, $e := .SI}}{{end}}\n{{$e}}", r':2: undefined variable "\$e"'),
    ("{{$x := 1}}{{define \"t\"}}{{$x}}{{end}}", r'undefined variable "\$x"'),
    ("{{template \"t\" $v}}", r'undefined variable "\$v"'),
    # assigning a name never declared parses, then fails when it runs, as in Go
    ("{{$nope = 1}}", r"undefined variable: \$nope"),
    ("{{$x := $x}}", r"undefined variable: \$x"),
])
def test_go_scoping_errors(src: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render(src, DATA)
