"""The README's quick start as a new user runs it: a fresh clone, a fresh venv, `pip install .` with an
empty pip cache, then `corral run gemma3:270m "Why is the sky blue?"` until its first word.

Run: ``python bench/install.py [--rounds 3] [--cold]``. The clone is of this checkout's HEAD
(uncommitted changes are not in it). Each round times the phases separately: ``git clone``; the venv;
pip (resolving and downloading, building corral, installing; pip's own lines, timestamped as they
come); and ``corral run`` from its start to the first byte of the answer (it starts the background
server, imports the embedded model into an empty store and loads it). The server is stopped after.

By default the llama.cpp build cache (``~/.cache/corral/build``) is warm, as on a second install; with
``--cold`` each round builds into an empty cache (``CORRAL_BUILD_CACHE``) with ccache off (a fresh
machine has no compiler cache to draw on), which takes minutes and both cores. Besides wall time, pip's
CPU seconds (user + system, pip and everything it ran: the compilers) are reported: on a shared machine
they measure the build's cost where wall time measures the neighbours too. The bar is issue 14's: a
cold install and first answer within 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAR_S = 240.0  # issue 14: fresh clone, empty build cache, 2 cores: answered within 4 minutes
PROMPT = "Why is the sky blue?"
STARTED = re.compile(r"Building wheel for corral \(pyproject\.toml\): started")
FINISHED = re.compile(r"Building wheel for corral \(pyproject\.toml\): finished")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_pip(venv: Path, clone: Path, env: dict[str, str], log: Path) -> dict[str, float]:
    """pip install -c constraints.txt . in ``clone``: seconds to the build, of the build, after it."""
    t0 = time.monotonic()
    cpu0 = children_cpu()
    marks: dict[str, float] = {}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(venv / "bin" / "pip"), "install", "-c", "constraints.txt", "."],
                                cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic() - t0
            out.write(f"{now:7.1f} {line}")
            if STARTED.search(line):
                marks.setdefault("build_start", now)
            elif FINISHED.search(line):
                marks["build_end"] = now
        if proc.wait() != 0:
            sys.exit(f"pip install failed; see {log}")
    total = time.monotonic() - t0
    start, end = marks.get("build_start", 0.0), marks.get("build_end", 0.0)
    return {"pip: resolve + download": start, "pip: build corral": end - start, "pip: install": total - end,
            "pip total": total, "pip CPU seconds": children_cpu() - cpu0}


def children_cpu() -> float:
    """User + system CPU seconds of every finished child and its waited-for descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def first_answer(venv: Path, work: Path, env: dict[str, str]) -> float:
    """Seconds from `corral run` to the first byte of its answer; then Ctrl-C and stop the server."""
    t0 = time.monotonic()
    proc = subprocess.Popen([str(venv / "bin" / "corral"), "run", "gemma3:270m", PROMPT], cwd=work, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    elapsed = time.monotonic() - t0
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    pid_file = Path(env["CORRAL_HOME"]) / "server.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
    if not first:
        sys.exit(f"corral run printed nothing; see {env['CORRAL_HOME']}/logs/server.log")
    return elapsed


def one_round(work: Path, cold: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "VIRTUAL_ENV"))}
    env.update(PIP_CACHE_DIR=str(work / "pip-cache"), CORRAL_HOME=str(work / "home"),
               CORRAL_MODELS=str(work / "models"), CORRAL_HOST=f"127.0.0.1:{free_port()}")
    if cold:
        env.update(CORRAL_BUILD_CACHE=str(work / "build-cache"), CCACHE_DISABLE="1")
    times: dict[str, float] = {}
    t0 = time.monotonic()
    clone = work / "corral"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    times["git clone"] = time.monotonic() - t0
    t1 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
    times["venv"] = time.monotonic() - t1
    times.update(run_pip(clone / ".venv", clone, env, work / "pip.log"))
    times["corral run: first word"] = first_answer(clone / ".venv", clone, env)
    times["total"] = time.monotonic() - t0
    times["load average (1 min) after"] = os.getloadavg()[0]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="an empty llama.cpp build cache each round")
    parser.add_argument("--keep", action="store_true", help="keep the work directories (pip logs)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"README quick start, {'cold' if args.cold else 'warm'} build cache, {args.rounds} round(s), "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the start")
    rounds: list[dict[str, float]] = []
    for i in range(args.rounds):
        work = Path(tempfile.mkdtemp(prefix="corral-bench-install-"))
        try:
            rounds.append(one_round(work, args.cold))
        finally:
            if args.keep:
                print(f"  round {i + 1}: kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        print(f"  round {i + 1}: total {rounds[-1]['total']:.1f} s", flush=True)
    print(f"\n{'phase (wall s unless named)':<30}{'median':>10}{'min':>8}{'max':>8}")
    for phase in rounds[0]:
        values = [r[phase] for r in rounds]
        print(f"{phase:<30}{statistics.median(values):>10.1f}{min(values):>8.1f}{max(values):>8.1f}")
    median = statistics.median(r["total"] for r in rounds)
    print(f"\nbar (issue 14, cold cache, 2 cores): {BAR_S:.0f} s; this run's median {median:.1f} s "
          f"= {median / BAR_S:.2f} x the bar ({'cold' if args.cold else 'warm'} cache; "
          f"load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
