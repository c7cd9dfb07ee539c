"""Claude Code (``claude -p``) and Codex (``codex exec``, custom provider and ``--oss``) each complete a turn
against a live ``corral serve`` on the CPU backend, unchanged; every request they make is logged.

The agents are installed by npm into a cache outside the clone (``agent_support.install_agents``); the
test is skipped, saying why, only where npm is absent. The model is Gemma 3 270M with a Modelfile that
gives it a tool-capable template (the agents send tools on every turn) and ends a turn at a newline (the
base model seldom ends one by itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_support import RecordingProxy, install_agents
from client_support import CPU_LIB

from corral.prompts.builtin import GEMMA3_TEMPLATE
from corral.testing.live import free_port

pytestmark = [pytest.mark.slow, pytest.mark.gemma]

MODEL = "gemma-agent"
# Gemma 3's own template with the tool names shown first and earlier tool calls written back.
AGENT_TEMPLATE = (
    "{{- if .Tools }}<start_of_turn>user\nYou may call these tools: {{ range .Tools }}{{ .Function.Name }} "
    "{{ end }}<end_of_turn>\n{{ end }}"
    + GEMMA3_TEMPLATE.replace(
        "{{ .Content }}{{ if not $last }}<end_of_turn>",
        '{{ .Content }}{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", "arguments": '
        "{{ .Function.Arguments }}}</tool_call>{{ end }}{{ if not $last }}<end_of_turn>",
    )
)
# A newline ends the turn: the stop value is a triple-quoted block holding just a line break.
MODELFILE = (
    f'FROM gemma3:270m\nTEMPLATE """{AGENT_TEMPLATE}"""\nPARAMETER stop """\n"""\nPARAMETER temperature 0\n'
)
# The same model with no stop and a cap of a few tokens: every turn ends on the length cap.
CAPPED, CAP = "gemma-agent-capped", 3
CAPPED_MODELFILE = (
    f'FROM gemma3:270m\nTEMPLATE """{AGENT_TEMPLATE}"""\n'
    f"PARAMETER num_predict {CAP}\nPARAMETER temperature 0\n"
)


@pytest.fixture(scope="module")
def agents() -> dict[str, Path]:
    found = install_agents()
    if isinstance(found, str):
        pytest.skip(found)
    return found


def _env(root: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "ANTHROPIC_", "OPENAI_"))}
    env.update(
        CORRAL_HOST=f"127.0.0.1:{port}",
        CORRAL_MODELS=str(root / "models"),
        CORRAL_HOME=str(root),
        CORRAL_BACKEND="cpu",
        CORRAL_NUM_PARALLEL="1",
        # The agents' prompts are 3-4.5k tokens before the user speaks (agent-clients.md).
        CORRAL_CONTEXT_LENGTH="8192",
    )
    return env


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``corral serve`` as a user runs it, with the agent model created through ``corral create``."""
    if not any(CPU_LIB.glob("libllama*")):
        pytest.skip("the CPU backend is not built (plugins/cpu/_lib is empty)")
    root = tmp_path_factory.mktemp("agents-serve")
    port = free_port()
    env = _env(root, port)
    log = open(root / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "corral.cli", "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "serve.log").read_text()[
                -3000:
            ]
            time.sleep(0.2)
        for name, text in ((MODEL, MODELFILE), (CAPPED, CAPPED_MODELFILE)):
            (root / f"Modelfile.{name}").write_text(text)
            made = subprocess.run(
                [sys.executable, "-m", "corral.cli", "create", name, "-f", str(root / f"Modelfile.{name}")],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert made.returncode == 0, made.stderr
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        print(f"--- corral serve log (tail) ---\n{(root / 'serve.log').read_text()[-4000:]}")


def _run(
    cmd: list[str], env: dict[str, str], cwd: Path, proxy: RecordingProxy
) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    print(f"$ {' '.join(cmd)}\n  rc={proc.returncode} in {time.monotonic() - started:.1f} s")
    print(f"  stdout: {proc.stdout.strip()[-1500:]!r}\n  stderr (tail): {proc.stderr.strip()[-1500:]!r}")
    print("  requests it made:")
    for rec in proxy.records:
        print("   ", json.dumps(rec))
    return proc


def _client_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CORRAL_", "ANTHROPIC_", "OPENAI_", "CODEX_"))
    }
    env.update(HOME=str(home), NO_COLOR="1", **extra)
    return env


def test_claude_code_completes_a_turn(agents: dict[str, Path], corral: str, tmp_path: Path) -> None:
    with RecordingProxy(corral) as proxy:
        env = _client_env(
            tmp_path,
            ANTHROPIC_BASE_URL=proxy.url,
            ANTHROPIC_AUTH_TOKEN="corral",
            DISABLE_TELEMETRY="1",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        )
        proc = _run([str(agents["claude"]), "-p", "Say hi", "--model", MODEL], env, tmp_path, proxy)
    turns = [r for r in proxy.records if r["path"].startswith("/v1/messages")]
    assert proc.returncode == 0, proc.stderr
    assert turns and all(r["status"] == 200 for r in turns)
    first = turns[0]
    assert first["path"] == "/v1/messages?beta=true" and first["body"]["stream"] is True
    # its 24 tools, and a system message inside messages (mid-conversation-system beta)
    assert len(first["body"]["tools"]) > 10 and "system" in first["body"]["messages"]
    assert first["events"][0] == "message_start" and first["events"][-1] == "message_stop"
    assert "content_block_stop" in first["events"]
    assert proc.stdout.strip()  # it printed the model's answer


def _codex_args(agents: dict[str, Path]) -> list[str]:
    return [str(agents["codex"]), "exec", "--skip-git-repo-check", "--color", "never"]


def _codex_custom(
    agents: dict[str, Path], corral: str, tmp_path: Path, model: str
) -> tuple[subprocess.CompletedProcess[str], RecordingProxy]:
    with RecordingProxy(corral) as proxy:
        provider = (
            f'model_providers.corral={{ name = "corral", base_url = "{proxy.url}/v1", '
            'wire_api = "responses", env_key = "AGENT_TEST_KEY" }'
        )
        env = _client_env(tmp_path, CODEX_HOME=str(tmp_path / "codex"), AGENT_TEST_KEY="corral")
        (tmp_path / "codex").mkdir()
        proc = _run(
            [*_codex_args(agents), "-c", 'model_provider="corral"', "-c", provider, "-m", model, "Say hi"],
            env,
            tmp_path,
            proxy,
        )
    return proc, proxy


def test_codex_custom_provider_completes_a_turn(agents: dict[str, Path], corral: str, tmp_path: Path) -> None:
    proc, proxy = _codex_custom(agents, corral, tmp_path, MODEL)
    turns = [r for r in proxy.records if r["path"] == "/v1/responses"]
    assert proc.returncode == 0, proc.stderr
    assert turns and all(r["status"] == 200 for r in turns)
    assert turns[0]["body"]["stream"] is True and "multi_agent_v1" in turns[0]["body"]["tools"]
    assert turns[0]["events"][-1] == "response.completed"
    assert proc.stdout.strip()  # it printed the model's answer (built from response.output_item.done)


# Codex sends no max_output_tokens: the model's own cap ends its turns. A turn cut by that cap is still a
# finished turn (Ollama and llama-server end it with status "completed"); Codex fails one that says otherwise.
def test_codex_turn_cut_by_the_length_cap_ends_cleanly(
    agents: dict[str, Path], corral: str, tmp_path: Path
) -> None:
    proc, proxy = _codex_custom(agents, corral, tmp_path, CAPPED)
    turns = [r for r in proxy.records if r["path"] == "/v1/responses"]
    assert proc.returncode == 0, proc.stderr
    assert len(turns) == 1 and turns[0]["status"] == 200  # no retries
    last = turns[0]["last"]
    assert last["type"] == "response.completed" and last["status"] == "completed"
    assert last["usage"]["output_tokens"] == CAP  # the cap, not the model, ended the turn
    assert last["incomplete_details"] == {"reason": "max_output_tokens"}  # and says so
    assert "Incomplete response" not in proc.stderr


# Codex looks the model up in /api/tags by its exact name (and pulls it otherwise), so it gets the tag.
def test_codex_oss_mode_checks_the_version_and_completes(
    agents: dict[str, Path], corral: str, tmp_path: Path
) -> None:
    with RecordingProxy(corral) as proxy:
        env = _client_env(tmp_path, CODEX_HOME=str(tmp_path / "codex"), CODEX_OSS_BASE_URL=f"{proxy.url}/v1")
        (tmp_path / "codex").mkdir()
        proc = _run(
            [*_codex_args(agents), "--oss", "--local-provider", "ollama", "-m", f"{MODEL}:latest", "Say hi"],
            env,
            tmp_path,
            proxy,
        )
    paths = [r["path"] for r in proxy.records]
    assert proc.returncode == 0, proc.stderr
    assert "/api/version" in paths and "/v1/responses" in paths
    version: Any = httpx.get(corral + "/api/version").json()
    assert tuple(int(x) for x in version["version"].split(".")) >= (0, 13, 4)
