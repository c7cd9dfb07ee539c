"""The interactive `corral run` driven in a real pseudo-terminal (pexpect) against the live server."""

from __future__ import annotations

import os
import sys

import pexpect
import pytest

from .conftest import LiveServer

PROMPT = ">>> "
TIMEOUT = 120  # a ceiling for each expected output, not a speed bar: a busy 2-core machine is slow


@pytest.fixture
def repl(live_server: LiveServer, tiny_model: str) -> pexpect.spawn:
    # pexpect never answers prompt_toolkit's cursor-position query; without this each prompt waits
    # for the query to time out (a real terminal answers at once).
    env = {**os.environ, **live_server.env, "TERM": "xterm", "COLUMNS": "100", "LINES": "40",
           "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(sys.executable, ["-m", "corral.cli", "run", tiny_model], env=env,
                          encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 100))
    child.expect_exact(PROMPT)
    yield child
    if child.isalive():
        child.terminate(force=True)


def test_repl_streams_sets_parameters_stops_on_ctrl_c_and_leaves(repl: pexpect.spawn,
                                                               live_server: LiveServer) -> None:
    repl.sendline("hello from the terminal")
    repl.expect_exact("terminal")  # the fake echoes the prompt's last words, streamed
    repl.expect_exact(PROMPT)

    repl.sendline("/set parameter temperature 0")
    repl.expect_exact("Set parameter 'temperature' to '0'")
    repl.expect_exact(PROMPT)

    # A scripted answer that streams for ~500 s: Ctrl-C must stop it (the prompt comes back long before
    # the answer could have ended), not the program.
    repl.sendline("please go slowly")
    repl.expect_exact("three")
    repl.sendcontrol("c")
    repl.expect_exact(PROMPT)
    assert repl.isalive()

    repl.sendline('"""first line')
    repl.expect_exact("... ")
    repl.sendline('second line"""')
    repl.expect_exact("line")
    repl.expect_exact(PROMPT)

    repl.sendline("/show parameters")
    repl.expect_exact("User defined parameters:")
    repl.expect_exact(PROMPT)

    repl.sendline("/bye")
    repl.expect(pexpect.EOF)
    repl.wait()
    assert repl.exitstatus == 0


def test_repl_help_system_save_clear_and_ctrl_d(repl: pexpect.spawn, live_server: LiveServer) -> None:
    repl.sendline("/?")
    repl.expect_exact("/set")
    repl.expect_exact("/bye")
    repl.expect_exact(PROMPT)
    repl.sendline("/set system You answer in French.")
    repl.expect_exact("Set system message.")
    repl.expect_exact(PROMPT)
    repl.sendline("/save tiny-french")
    repl.expect_exact("Created new model 'tiny-french'")
    repl.expect_exact(PROMPT)
    saved = live_server.client.request("POST", "/api/show", {"model": "tiny-french"})
    assert saved["system"] == "You answer in French."
    live_server.client.request("DELETE", "/api/delete", {"model": "tiny-french"})
    repl.sendline("/clear")
    repl.expect_exact("Cleared session context")
    repl.expect_exact(PROMPT)
    repl.sendcontrol("d")
    repl.expect(pexpect.EOF)
    repl.wait()
    assert repl.exitstatus == 0
