"""Issue 10's reproductions against a live server: each gets a 4xx (or a bounded success) within its
limits, while /api/version keeps answering in under 100 ms, and the read-only routes stay up after."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import httpx
import pytest

from corral.testing.tinymodel import write_tiny_gguf

from .conftest import Served, probed

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture(autouse=True)
def _routes_survive(served: Served):
    yield
    served.read_only_routes_answer()


def _model_with_chat_template(served: Served, tmp_path: Path, name: str, template: str) -> None:
    spec = write_tiny_gguf(tmp_path / f"{name}.gguf", chat_template=template)
    digest = served.upload(Path(spec.path))
    r = served.http.post("/api/create", json={"model": name, "files": {"m.gguf": digest}, "stream": False})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("template", [
    "{{ ((3**256)**256)**256 }}",
    "{{ ([ 'a'*4000000 ]*100)|tojson }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
], ids=["pow", "tojson", "format-width", "loop"])
def test_jinja_bombs_are_400_within_the_render_limit(served: Served, tmp_path: Path, template: str) -> None:
    _model_with_chat_template(served, tmp_path, "jinja-bomb", template)
    def chat() -> tuple[httpx.Response, float]:
        t0 = time.monotonic()
        return served.http.post("/api/chat", json={"model": "jinja-bomb", **CHAT}), time.monotonic() - t0

    r, took = probed(served, chat)
    assert r.status_code == 400, r.text
    assert "chat template" in r.json()["error"]
    assert took < 6.0  # two renders (system-role probe and the prompt) of at most 2 s each


_GO_BOMB = '{{range 100000}}{{printf "%4000000d" 1}}{{end}}{{ .Prompt }}'


def _go_bomb_requests(served: Served) -> None:
    r = served.http.post("/api/create", json={"model": "go-bomb", "from": "tiny", "template": _GO_BOMB,
                                              "stream": False})
    # compat(go): widths past 1e6 print %!(BADWIDTH), so the template makes 1.3 MB of output: within the
    # limits, or refused at create when its test render runs past the time limit on a slow machine
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert "longer than" in r.json()["error"]
        return
    t0 = time.monotonic()
    r = served.http.post("/api/generate", json={"model": "go-bomb", "prompt": "hi", "stream": False,
                                                "options": {"num_predict": 4}})
    assert r.status_code in (200, 400), r.text
    assert time.monotonic() - t0 < 15.0


def test_go_template_printf_bomb_is_bounded(served: Served) -> None:
    _go_bomb_requests(served)


def test_go_template_printf_bomb_leaves_the_event_loop_free(served: Served) -> None:
    probed(served, lambda: _go_bomb_requests(served))


@pytest.mark.parametrize("template", [
    "{{if 1}}" * 3000 + "x" + "{{end}}" * 3000,
    "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}",
    "line one\n{{ .Prompt }}\n{{ nosuchfunction .Prompt }}",
    "{{ range .Messages }}{{ .Content }}",
], ids=["nested-if", "nested-parens", "unknown-function", "unclosed-range"])
def test_broken_templates_are_refused_at_create_with_the_line(served: Served, template: str) -> None:
    r = probed(served, lambda: served.http.post("/api/create", json={
        "model": "go-broken", "from": "tiny", "template": template, "stream": False}))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.startswith("invalid TEMPLATE: template: :") and (":1:" in error or ":3:" in error)


@pytest.mark.parametrize("keep_alive", [1e12, 1e308, "99999999999h", -1])
def test_huge_keep_alive_means_forever_and_ps_and_metrics_answer(served: Served, keep_alive: object) -> None:
    r = served.http.post("/api/chat", json={"model": "tiny", "keep_alive": keep_alive, **CHAT})
    assert r.status_code == 200, r.text
    ps = served.http.get("/api/ps")
    assert ps.status_code == 200, ps.text
    row = next(m for m in ps.json()["models"] if m["name"] == "tiny:latest")
    assert row["expires_at"] > "2200"  # forever, as Ollama shows it
    assert served.http.get("/metrics").status_code == 200
    # a normal keep_alive afterwards puts the model back on a timer
    r = served.http.post("/api/chat", json={"model": "tiny", "keep_alive": "5m", **CHAT})
    assert r.status_code == 200


@pytest.mark.parametrize(("route", "body"), [
    ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2**64}}),
    ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_ctx": 1e300}}),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 2**64}),
])
def test_integers_past_64_bits_are_400(served: Served, route: str, body: dict) -> None:
    r = served.http.post(route, json=body)
    assert 400 <= r.status_code < 500, r.text


def _nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize("schema", [
    _nested(400),
    {"type": "array", "items": {"type": "string"}, "minItems": "many"},
    {"type": "object", "properties": {"a": {"enum": [f"value number {i}" for i in range(5000)]}}},
    {"type": "string", "maxLength": 10**12},
], ids=["nested-400", "minItems-string", "enum-5000", "huge-maxLength"])
def test_hostile_schemas_are_400_fast(served: Served, schema: dict) -> None:
    def generate() -> tuple[httpx.Response, float]:
        t0 = time.monotonic()
        r = served.http.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False,
                                                    "format": schema})
        return r, time.monotonic() - t0

    r, took = probed(served, generate)
    assert r.status_code == 400, r.text
    assert "schema" in r.json()["error"] or "at #" in r.json()["error"]
    assert took < 5.0


def _gguf(kv: list[tuple[str, int, bytes]]) -> bytes:
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv) + 1)
    out += s("general.architecture") + struct.pack("<I", 8) + s("llama")
    for key, vtype, payload in kv:
        out += s(key) + struct.pack("<I", vtype) + payload
    return out


@pytest.mark.parametrize("value", [
    (8, struct.pack("<Q", 4) + b"many"),  # a string
    (12, struct.pack("<d", float("nan"))),  # a float (NaN)
    (9, struct.pack("<IQ", 4, 2) + struct.pack("<II", 1, 2)),  # an array of uint32
], ids=["string", "nan", "array"])
def test_gguf_parameter_count_of_the_wrong_type_is_400_at_create(served: Served, tmp_path: Path,
                                                                 value: tuple[int, bytes]) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(_gguf([("general.parameter_count", *value)]))
    digest = served.upload(path)
    r = served.http.post("/api/create", json={"model": "bad-count", "files": {"bad.gguf": digest},
                                              "stream": False})
    assert r.status_code == 400, r.text
    assert "general.parameter_count" in r.json()["error"]


def test_push_to_an_unreachable_registry_is_502_naming_the_host(served: Served) -> None:
    assert served.http.post("/api/copy", json={"source": "tiny",
                                               "destination": "127.0.0.1:9/x/tiny"}).status_code == 200
    r = served.http.post("/api/push", json={"model": "127.0.0.1:9/x/tiny", "insecure": True, "stream": False})
    assert r.status_code == 502, r.text
    assert "127.0.0.1:9" in r.json()["error"]


def test_too_many_embedding_inputs_are_400(served: Served) -> None:
    body = {"model": "tiny", "input": ["x"] * 10_000}
    r = probed(served, lambda: served.http.post("/api/embed", json=body))
    assert r.status_code == 400, r.text
    assert "2048" in r.json()["error"]


def test_metrics_label_each_model_once_however_it_is_spelled(served: Served) -> None:
    for name in ("tiny", "TINY", "Tiny:Latest", "registry.ollama.ai/library/tiny:latest"):
        r = served.http.post("/api/generate", json={"model": name, "prompt": "hi", "stream": False,
                                                    "options": {"num_predict": 2}})
        assert r.status_code == 200, r.text
    series = [line.rsplit(" ", 1)[0] for line in served.http.get("/metrics").text.splitlines()
              if line.startswith("corral_generated_tokens_total{") and "tiny" in line.lower()]
    assert series == ['corral_generated_tokens_total{model="tiny:latest"}']


def test_errors_carry_no_absolute_paths(served: Served) -> None:
    bodies = [served.http.post("/api/create", json={"model": "x", "files": {"a.gguf": "sha256:" + "0" * 64}}),
              served.http.post("/api/show", json={"model": "nothing-here"})]
    for r in bodies:
        assert r.status_code >= 400
        assert str(served.root) not in r.text and "/home/" not in r.text and "/root/" not in r.text
