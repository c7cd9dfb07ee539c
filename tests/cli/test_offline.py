"""CLI behaviour that needs no running server: parsing, formatting, errors and exit codes, backends."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli.chat import WordWrapper
from corral.cli.common import format_duration, human_size, metrics_summary, time_ago, time_until
from corral.cli.create import build_request
from corral.cli.main import app
from corral.cli.run import normalize_think
from corral.errors import ModelfileError

runner = CliRunner()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_word_wrapper_breaks_at_word_boundaries() -> None:
    w = WordWrapper(20)
    text = "the quick brown fox jumps over the lazy dog and keeps running far away"
    out = "".join(w.feed(c) for c in text) + w.flush()  # fed one character at a time, as a stream
    lines = out.split("\n")
    assert all(len(line) <= 20 for line in lines), lines
    assert " ".join(lines) == text  # nothing lost, no word split


def test_word_wrapper_keeps_newlines_and_splits_overlong_words() -> None:
    w = WordWrapper(10)
    out = w.feed("ab\ncd " + "x" * 25) + w.flush()
    assert out.startswith("ab\ncd")
    assert all(len(line) <= 10 for line in out.split("\n"))
    assert out.replace("\n", "").replace(" ", "") == "abcd" + "x" * 25


def test_normalize_think_gives_a_bare_flag_the_value_true() -> None:
    assert normalize_think(["run", "m", "--think"]) == ["run", "m", "--think=true"]
    assert normalize_think(["run", "--think", "m", "hi"]) == ["run", "--think=true", "m", "hi"]
    assert normalize_think(["run", "--think", "high", "m"]) == ["run", "--think", "high", "m"]
    assert normalize_think(["run", "m", "--", "--think"]) == ["run", "m", "--", "--think"]


def test_human_numbers() -> None:
    assert human_size(291_000_000) == "291 MB"
    assert human_size(1_600_000_000) == "1.6 GB"
    assert human_size(0) == "0 B"
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert time_ago((now - timedelta(minutes=4)).isoformat(), now) == "4 minutes ago"
    assert time_ago("2025-12-31T11:00:00.123456789Z", now) == "1 day ago"
    assert time_until((now + timedelta(minutes=5, seconds=1)).isoformat(), now) == "5 minutes from now"
    assert time_until("2318-01-01T00:00:00Z", now) == "Forever"
    assert format_duration(1_500_000_000) == "1.5s"
    assert format_duration(83_400_000) == "83.4ms"
    assert format_duration(125_000_000_000) == "2m5s"


def test_metrics_summary_has_ollamas_lines_and_rates() -> None:
    text = metrics_summary({"total_duration": 2_000_000_000, "load_duration": 1_000_000,
                            "prompt_eval_count": 10, "prompt_eval_duration": 500_000_000,
                            "eval_count": 20, "eval_duration": 1_000_000_000})
    assert "prompt eval count:    10 token(s)" in text
    assert "prompt eval rate:     20.00 tokens/s" in text
    assert "eval rate:            20.00 tokens/s" in text
    assert text.splitlines()[0].startswith("total duration:")


def test_modelfile_becomes_a_create_request(tmp_path: Path) -> None:
    gguf = tmp_path / "weights.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    mf = tmp_path / "Modelfile"
    mf.write_text('FROM ./weights.gguf\nPARAMETER temperature 0.5\n'
                  'PARAMETER stop "<a>"\nPARAMETER stop "<b>"\n'
                  'SYSTEM """You are\nterse."""\nMESSAGE user hi\nMESSAGE assistant hello\nLICENSE MIT\n')
    body, uploads = build_request("mine", mf, "q8_0")
    assert uploads == [("from", gguf)]
    assert body["parameters"] == {"temperature": 0.5, "stop": ["<a>", "<b>"]}
    assert body["system"] == "You are\nterse."
    assert body["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert body["license"] == ["MIT"] and body["quantize"] == "q8_0" and "from" not in body


def test_modelfile_from_a_model_name_and_errors(tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM gemma3:270m\n")
    body, uploads = build_request("mine", mf, None)
    assert body == {"model": "mine", "from": "gemma3:270m"} and uploads == []
    mf.write_text("FROM ./missing.gguf\n")
    with pytest.raises(ModelfileError, match="line 1.*does not exist"):
        build_request("mine", mf, None)
    with pytest.raises(ModelfileError, match="no Modelfile"):
        build_request("mine", tmp_path / "nope", None)


def test_unreachable_remote_server_is_one_red_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    # A non-loopback CORRAL_HOST is never autostarted: the error must say nothing answers there.
    monkeypatch.setenv("CORRAL_HOST", "http://192.0.2.1:9")  # TEST-NET-1: never routable
    monkeypatch.setattr("corral.cli.client.Client.ping", lambda self, timeout=2.0: False)
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 1
    assert "no corral server answers at http://192.0.2.1:9" in result.output
    assert "hint:" in result.output and "Traceback" not in result.output


def test_stop_without_a_server_does_not_start_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORRAL_HOST", f"127.0.0.1:{_dead_port()}")
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    result = runner.invoke(app, ["stop", "gemma3:270m"])
    assert result.exit_code == 1
    assert "couldn't find model \"gemma3:270m\" to stop" in result.output
    assert not (tmp_path / "logs").exists()  # no background server was started


def test_usage_errors_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(app, ["run"]).exit_code == 2  # missing MODEL
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2
    r = runner.invoke(app, ["run", "m", "hi", "--format", "yaml"])
    assert r.exit_code == 2 and "only 'json'" in r.output
    r = runner.invoke(app, ["run", "m", "hi", "--keepalive", "3600"])
    assert r.exit_code == 2 and "missing unit" in r.output
    monkeypatch.setenv("CORRAL_NUM_PARALLEL", "many")
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 2 and "invalid environment setting" in r.output


def test_show_flags_are_exclusive() -> None:
    r = runner.invoke(app, ["show", "m", "--license", "--template"])
    assert r.exit_code == 2 and "only one of" in r.output


def test_version_without_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_HOST", f"127.0.0.1:{_dead_port()}")
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert "could not connect to a running corral server" in r.output
    assert "client version is 0." in r.output


def test_backends_json_lists_every_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_EXTRA_PLUGINS", "corral.testing.fake")
    pytest.importorskip("corral.testing.fake")
    r = runner.invoke(app, ["backends", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    fake = next(b for b in data["backends"] if b["name"] == "fake")
    assert fake["usable"] is True
    table = runner.invoke(app, ["backends"])
    assert table.exit_code == 0 and "fake" in table.output


def test_serve_with_an_unavailable_backend_fails_before_http(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _dead_port()
    monkeypatch.setenv("CORRAL_HOST", f"127.0.0.1:{port}")
    r = runner.invoke(app, ["serve", "--backend", "cuda"])
    assert r.exit_code == 2
    assert "backend 'cuda'" in r.output and "NAME" in r.output  # the candidates table
    with socket.socket() as s:  # nothing was bound
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_bare_corral_prints_help_and_succeeds() -> None:
    r = runner.invoke(app, [])
    assert r.exit_code == 0 and "Usage:" in r.output and "run" in r.output


def test_serve_on_a_taken_port_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("corral.testing.fake")
    monkeypatch.setenv("CORRAL_EXTRA_PLUGINS", "corral.testing.fake")
    monkeypatch.setenv("CORRAL_BACKEND", "fake")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("CORRAL_HOST", f"127.0.0.1:{busy.getsockname()[1]}")
        r = runner.invoke(app, ["serve"])
    assert r.exit_code == 1
    assert "cannot listen on 127.0.0.1" in r.output and "in use" in r.output


def test_repl_load_asks_the_new_model_to_think_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.cli import repl

    monkeypatch.setattr(repl.Repl, "_session", lambda self: None)

    class Client:
        def request(self, method: str, path: str, body: dict) -> dict:
            caps = ["completion", "thinking"] if body.get("model") == "thinker" else ["completion"]
            return {"capabilities": caps} if path == "/api/show" else {}

        def stream(self, method: str, path: str, body: dict) -> list[dict]:
            assert path == "/api/chat" and body["messages"] == []  # /load loads the model at once
            return [{"done": True, "done_reason": "load"}]

    r = repl.Repl(Client(), "plain", {"capabilities": ["completion"]}, format=None, think=None,
                  keepalive=None, verbose=False, wordwrap=False, hidethinking=False, think_auto=True)
    r._load(["/load", "thinker"])
    assert r.think is True
    r._load(["/load", "plain"])
    assert r.think is None
    r._set("/set nothink", ["/set", "nothink"])
    r._load(["/load", "thinker"])
    assert r.think is False  # the user said so: it sticks across models
