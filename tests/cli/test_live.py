"""Every client command through typer's CliRunner against a live `corral serve` on the fake backend."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from corral.cli.common import human_size
from corral.cli.main import app

from .conftest import LiveServer

runner = CliRunner()


def invoke(*args: str, input: str | None = None) -> object:
    return runner.invoke(app, list(args), input=input)


def test_list_shows_ollamas_columns_and_json(cli_env: LiveServer, tiny_model: str) -> None:
    r = invoke("list")
    assert r.exit_code == 0, r.output
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(line for line in rows if line.startswith("tiny:latest"))
    cells = row.split()
    assert len(cells[1]) == 12 and cells[3] in ("KB", "MB")  # 12-hex ID, then "637 KB"
    assert row.endswith("ago")
    models = json.loads(invoke("ls", "--json").stdout)
    tiny = next(m for m in models if m["name"] == "tiny:latest")
    assert tiny["digest"].startswith(cells[1]) and tiny["size"] > 0


def test_show_default_and_each_section(cli_env: LiveServer, tiny_model: str) -> None:
    r = invoke("show", "tiny")
    assert r.exit_code == 0, r.output
    for heading in ("Model", "Capabilities", "Parameters", "System", "License"):
        assert f"  {heading}\n" in r.stdout, r.stdout
    assert "architecture" in r.stdout and "llama" in r.stdout and "temperature" in r.stdout
    assert invoke("show", "tiny", "--system").stdout == "You are tiny.\n"
    assert invoke("show", "tiny", "--license").stdout.startswith("Tiny License\nsecond line")
    assert "temperature" in invoke("show", "tiny", "--parameters").stdout
    modelfile = invoke("show", "tiny", "--modelfile").stdout
    assert "FROM " in modelfile and "SYSTEM" in modelfile
    assert invoke("show", "tiny", "--template").exit_code == 0
    verbose = invoke("show", "tiny", "-v")
    assert verbose.exit_code == 0 and "Metadata" in verbose.stdout


def test_cp_and_rm(cli_env: LiveServer, tiny_model: str) -> None:
    r = invoke("cp", "tiny", "tiny-copy:v1")
    assert r.exit_code == 0, r.output
    assert "tiny-copy:v1" in invoke("list").stdout
    r = invoke("rm", "tiny-copy:v1")
    assert r.exit_code == 0 and "deleted 'tiny-copy:v1'" in r.stdout
    assert "tiny-copy:v1" not in invoke("list").stdout
    again = invoke("rm", "tiny-copy:v1")
    assert again.exit_code == 1 and "not found" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 2  # one red line, one hint


def test_run_with_a_prompt_prints_the_answer(cli_env: LiveServer, tiny_model: str) -> None:
    r = invoke("run", "tiny", "hello", "there")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip()  # the fake echoes the prompt's last words, then filler
    assert "there" in r.stdout
    same = invoke("run", "tiny", "hello", "there")
    assert same.stdout == r.stdout  # temperature 0 from the Modelfile: deterministic


def test_run_reads_piped_stdin_and_verbose_prints_metrics(cli_env: LiveServer, tiny_model: str) -> None:
    r = invoke("run", "tiny", "--verbose", input="a question from a pipe\n")
    assert r.exit_code == 0, r.output
    assert "pipe" in r.stdout
    for line in ("total duration:", "prompt eval count:", "eval count:", "eval rate:"):
        assert line in r.stderr, r.stderr


def test_run_passes_format_think_and_keepalive(cli_env: LiveServer, tiny_model: str) -> None:
    r = invoke("run", "tiny", "json please", "--format", "json", "--keepalive", "10m", "--nowordwrap")
    assert r.exit_code == 0, r.output
    ps = json.loads(invoke("ps", "--json").stdout)
    tiny = next(m for m in ps if m["name"] == "tiny:latest")
    assert tiny["expires_at"]
    # The tiny model cannot think: the server refuses --think, and the CLI says so in one line.
    r = invoke("run", "tiny", "hi", "--think")
    assert r.exit_code == 1 and "think" in r.stderr


def test_run_shows_the_load_progress_before_the_answer(cli_env: LiveServer, tiny_model: str,
                                                       tiny_gguf: Path) -> None:
    invoke("stop", "tiny")
    r = invoke("run", "tiny", "hello")
    assert r.exit_code == 0, r.output
    # off a terminal, plain lines as a pull prints (the fake backend reports its load half done)
    size = tiny_gguf.stat().st_size
    half = f"{human_size(size // 2)}/{human_size(size)} (50%)"
    assert f"loading tiny: {half}" in r.stderr.splitlines(), r.stderr
    assert "hello" in r.stdout and "loading" not in r.stdout
    again = invoke("run", "tiny", "hello")  # loaded now: nothing to show
    assert again.exit_code == 0 and "loading" not in again.stderr and again.stdout == r.stdout
    invoke("stop", "tiny")
    # --keepalive 0 unloads after the answer: the CLI does not load first (that request would unload)
    once = invoke("run", "tiny", "hello", "--keepalive", "0s")
    assert once.exit_code == 0 and once.stdout == r.stdout and "loading" not in once.stderr
    assert "tiny:latest" not in invoke("ps").stdout


def test_backend_errors_mid_answer_are_one_line(cli_env: LiveServer, tiny_model: str) -> None:
    r = invoke("run", "tiny", "fail please")
    assert r.exit_code == 1
    assert "scripted failure" in r.stderr and "Traceback" not in r.output


def test_ps_and_stop(cli_env: LiveServer, tiny_model: str) -> None:
    assert invoke("run", "tiny", "warm up").exit_code == 0
    r = invoke("ps")
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(line for line in rows if line.startswith("tiny:latest"))
    assert "100% CPU" in row and "from now" in row
    r = invoke("stop", "tiny")
    assert r.exit_code == 0, r.output
    assert "tiny:latest" not in invoke("ps").stdout
    again = invoke("stop", "tiny")
    assert again.exit_code == 1 and 'couldn\'t find model "tiny" to stop' in again.stderr


def test_unknown_model_errors_clearly(cli_env: LiveServer) -> None:
    r = invoke("show", "no-such-model")
    assert r.exit_code == 1 and "not found" in r.stderr
    assert "corral list" in r.stderr  # the hint


def test_create_reports_modelfile_errors_with_the_line(cli_env: LiveServer, tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM tiny\nPARAMETER temperature hot\n")
    r = invoke("create", "broken", "-f", str(mf))
    assert r.exit_code == 1 and "line 2" in r.stderr


def test_create_from_a_model_with_parameters(cli_env: LiveServer, tiny_model: str, tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM tiny\nPARAMETER num_ctx 1024\nSYSTEM Be brief.\n")
    r = invoke("create", "tiny-brief", "-f", str(mf))
    assert r.exit_code == 0, r.output
    assert "success" in r.stderr  # plain progress lines when stderr is not a terminal
    assert invoke("show", "tiny-brief", "--system").stdout == "Be brief.\n"
    assert "num_ctx" in invoke("show", "tiny-brief", "--parameters").stdout
    assert invoke("rm", "tiny-brief").exit_code == 0


def test_version_reports_the_server(cli_env: LiveServer) -> None:
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.startswith("corral version is ")


THINK_TEMPLATE = ("{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}"
                  "assistant: {{ if .Think }}<think>{{ end }}")


def test_run_thinks_by_itself_for_thinking_models(cli_env: LiveServer, tiny_model: str) -> None:
    # PARSER, REQUIRES and RENDERER go through `corral create` into the config blob, and back out of show
    modelfile = cli_env.root / "Modelfile.think"
    modelfile.write_text(f'FROM tiny\nTEMPLATE """{THINK_TEMPLATE}"""\nPARSER qwen3-thinking\n'
                         "REQUIRES v0.14.0\n")
    r = invoke("create", "tiny-think", "-f", str(modelfile))
    assert r.exit_code == 0, r.output
    show = cli_env.client.request("POST", "/api/show", {"model": "tiny-think"})
    assert (show["parser"], show["requires"]) == ("qwen3-thinking", "0.14.0")
    assert "thinking" in show["capabilities"] and "PARSER qwen3-thinking" in show["modelfile"]
    assert "requires" in invoke("show", "tiny-think").stdout
    # compat(ollama): no --think: a thinking model is asked to think, and its reasoning is shown
    r = invoke("run", "tiny-think", "2+2?")
    assert r.exit_code == 0, r.output
    assert r.stdout == "Thinking...\nLet me add.\n...done thinking.\n\nIt is 4.\n"
    r = invoke("run", "tiny-think", "2+2?", "--hidethinking")
    assert (r.exit_code, r.stdout) == (0, "It is 4.\n")
    r = invoke("run", "tiny-think", "2+2?", "--think=false")
    assert (r.exit_code, r.stdout) == (0, "4.\n")


def test_create_refuses_unknown_renderer_parser_bad_requires(cli_env: LiveServer, tiny_model: str) -> None:
    for line, message in (("RENDERER nosuch", 'unknown renderer "nosuch"'),
                          ("PARSER nosuch", "unknown parser"),
                          ("REQUIRES 1.2.3.4", "requires must be a valid semver")):
        modelfile = cli_env.root / "Modelfile.bad"
        modelfile.write_text(f"FROM tiny\n{line}\n")
        r = invoke("create", "tiny-bad", "-f", str(modelfile))
        assert r.exit_code == 1 and message in r.stderr, r.output


def test_create_with_a_draft_model(cli_env: LiveServer, tiny_model: str, tmp_path: Path,
                                   tiny_gguf: Path) -> None:
    """DRAFT uploads the draft's GGUF as draft_files; show prints it back; --draft-quantize is sent."""
    (tmp_path / "m.gguf").write_bytes(tiny_gguf.read_bytes())
    (tmp_path / "d.gguf").write_bytes(tiny_gguf.read_bytes())
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./m.gguf\nDRAFT ./d.gguf\nPARAMETER draft_num_predict 2\n")
    r = invoke("create", "tiny-spec", "-f", str(modelfile))
    assert r.exit_code == 0, r.output
    show = cli_env.client.request("POST", "/api/show", {"model": "tiny-spec"})
    assert any(line.startswith("DRAFT ") for line in show["modelfile"].splitlines())
    assert "draft_num_predict" in show["parameters"]
    r = invoke("create", "tiny-spec2", "-f", str(modelfile), "--draft-quantize", "q3")
    assert r.exit_code == 1 and 'unsupported quantization type "q3"' in r.stderr, r.output
    modelfile.write_text("FROM ./m.gguf\nDRAFT ./m.gguf\n")
    r = invoke("create", "tiny-spec3", "-f", str(modelfile))
    assert r.exit_code == 1 and "DRAFT must not reference the same local path as FROM" in r.stderr
