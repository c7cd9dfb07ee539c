"""The wheel a distributor builds (`pip wheel .`) installs into a fresh virtualenv and answers with no
compiler, no cmake and no build tree: it carries its libraries and its stable-ABI cffi module.

The wheel here has the variants the install built (this CPU's and the baseline), from the build cache,
so the test costs seconds of packaging rather than a build; `CORRAL_CPU_VARIANTS=all pip wheel .`
makes the same wheel with every variant (README, "Building a wheel")."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from corral.testing.live import free_port

pytestmark = [pytest.mark.slow, pytest.mark.gemma]

ROOT = Path(__file__).resolve().parents[1]
CPU_LIB = ROOT / "plugins" / "cpu" / "_lib"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not any(CPU_LIB.glob("_llama_cpu*")):
        pytest.skip("the CPU backend is not built here (plugins/cpu/_lib)")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
                           str(ROOT)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("corral-*.whl")
    return built


def test_wheel_is_tagged_for_the_stable_abi_and_carries_the_libraries(wheel: Path) -> None:
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert wheel.name == f"corral-0.1.0-cp310-abi3-{platform}.whl"
    names = zipfile.ZipFile(wheel).namelist()
    lib = "corral_plugins/cpu/_lib/"
    assert f"{lib}_llama_cpu.abi3.so" in names and f"{lib}build-info.json" in names
    assert {f"{lib}libllama.so.0", f"{lib}libllama-common-fit.so.0", f"{lib}libmtmd.so.0",
            f"{lib}libggml.so.0", f"{lib}libggml-base.so.0", f"{lib}libggml-rpc.so"} <= set(names)
    assert f"{lib}libllama-common.so.0" not in names  # the tools' library: the module links only the fit
    variants = [n for n in names if n.startswith(f"{lib}libggml-cpu-")]
    assert f"{lib}libggml-cpu-x64.so" in variants
    assert not [n for n in names if "server" in n.rsplit("/", 1)[-1] or "bench" in n.rsplit("/", 1)[-1]]


def test_installed_wheel_answers_without_build_tools(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, timeout=300)
    # The dependencies come from this environment's site-packages as a plain path entry (no .pth
    # of it runs, so an editable corral there stays out): corral itself is the wheel's.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_deps_from_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=str(venv / "bin"), CORRAL_HOST=f"127.0.0.1:{free_port()}",
               CORRAL_MODELS=str(tmp_path / "models"), CORRAL_HOME=str(tmp_path / "home"),
               CORRAL_REGISTRY_MIRROR="http://127.0.0.1:9", XDG_CACHE_HOME=str(tmp_path / "cache"))
    for tool in ("cmake", "cc", "gcc", "c++", "ninja"):
        assert shutil.which(tool, path=env["PATH"]) is None
    where = subprocess.run([str(py), "-c", "import corral_plugins.cpu as c; print(c.LIB_DIR)"], env=env,
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), where

    pid_file = tmp_path / "home" / "server.pid"
    proc = subprocess.Popen([str(venv / "bin" / "corral"), "run", "gemma3:270m", "hi"], env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        os.set_blocking(proc.stdout.fileno(), False)
        answer = b""
        deadline = time.monotonic() + 600  # a ceiling: server start, CPU variant check, load, 3 words
        # Gemma 3 270M is a base model and may ramble: a few streamed words are the answer sought.
        while time.monotonic() < deadline and len(answer.split()) < 3 and proc.poll() is None:
            answer += proc.stdout.read() or b""
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: stops this answer, as a user would
        proc.wait(timeout=120)
        answer += proc.stdout.read() or b""
        err = proc.stderr.read().decode()
        assert proc.returncode in (0, 130), err
        assert answer.split(), err
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid_file.exists():
            pid = int(pid_file.read_text().strip())
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
