"""Vision from the CLI: `corral create` with a model and its projector as two FROM lines, and image paths
in a `corral run` prompt (one-shot and in the REPL) attached as Ollama's CLI attaches them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest
from typer.testing import CliRunner

from corral.cli.main import app
from corral.testing.tinyvision import png_bytes, write_tiny_projector

from .conftest import LiveServer

runner = CliRunner()
RED = png_bytes(40, 30, lambda x, y: (220, 20, 30))


@pytest.fixture(scope="module")
def vision_model(live_server: LiveServer, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """tiny-vision from a Modelfile with two FROM lines (as `ollama show --modelfile` writes one)."""
    d = tmp_path_factory.mktemp("vision-cli")
    projector = write_tiny_projector(d / "mmproj.gguf").path
    (d / "Modelfile").write_text(f"FROM {tiny_gguf}\nFROM {projector}\nPARAMETER temperature 0\n")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in live_server.env.items():
            mp.setenv(key, value)
        r = runner.invoke(app, ["create", "tiny-vision", "-f", str(d / "Modelfile")])
        assert r.exit_code == 0, r.output
        shown = runner.invoke(app, ["show", "tiny-vision"])
    assert "vision" in shown.stdout, shown.stdout
    # compat(ollama): a Projector section as `ollama show` prints it, from the projector's own header
    projector = shown.stdout.split("  Projector\n", 1)[1].split("\n\n", 1)[0].split()
    assert projector[:2] == ["architecture", "clip"] and "dimensions" in " ".join(projector), shown.stdout
    return "tiny-vision"


def test_run_attaches_image_paths_in_the_prompt(cli_env: LiveServer, vision_model: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "red photo.png").write_bytes(RED)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["run", vision_model, "what is in ./red\\ photo.png ?"])
    assert r.exit_code == 0, r.output
    assert "Added image './red photo.png'" in r.stderr
    # The fake backend describes each image it was given by its header: the file arrived, as an image.
    assert "is a png image of 40x30" in r.stdout and "photo.png" not in r.stdout
    missing = runner.invoke(app, ["run", vision_model, "what is in ./nowhere.png"])
    assert missing.exit_code == 0 and "Added image" not in missing.stderr
    assert "is a png image" not in missing.stdout  # no file, so no image: the path stays text
    (tmp_path / "notes.png").write_text("not an image at all")
    bad = runner.invoke(app, ["run", vision_model, "look at ./notes.png"])
    assert bad.exit_code == 1 and "./notes.png' is not a PNG" in bad.stderr


def test_text_models_leave_paths_alone(cli_env: LiveServer, tiny_model: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "red.png").write_bytes(RED)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["run", tiny_model, "what is in ./red.png"])
    assert r.exit_code == 0 and "Added image" not in r.stderr and "red.png" in r.stdout


def test_repl_attaches_images_and_keeps_them_in_the_conversation(live_server: LiveServer, vision_model: str,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "red.png").write_bytes(RED)
    env = {**os.environ, **live_server.env, "TERM": "xterm", "COLUMNS": "100", "LINES": "40",
           "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(sys.executable, ["-m", "corral.cli", "run", vision_model], env=env,
                          cwd=str(tmp_path), encoding="utf-8", timeout=30, dimensions=(40, 100))
    try:
        child.expect_exact(">>> ")
        child.sendline("describe ./red.png please")
        child.expect_exact("Added image './red.png'")
        child.expect_exact("is a png image of 40x30")
        child.expect_exact(">>> ")
        child.sendline("and now?")  # the image is still in the history the model sees
        child.expect_exact("is a png image of 40x30")
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
