"""How fast the CLI answers: cold `corral --help`, `corral list` and `corral ps`, against their bars.

Run: ``python bench/cli.py [--rounds 10]``. Each command runs ``--rounds`` times as a new process (a
cold interpreter, a warm page cache), as a user types it; `list` and `ps` talk to a `corral serve`
this script starts on a free port with an empty store. Printed: the median, min and max wall time per
command next to its bar, the bare interpreter's start (``python -c pass``, the floor no Python CLI goes
under), and where each command's import time goes (``-X importtime``, the smallest of the rounds per
module, summed by top-level package).

The bars are for a regular install (``pip install .``): an editable install (``pip install -e .``) adds
its import finder to every start of the interpreter, which the breakdown shows as ``__editable__``.

Results on the 2-core dev VM (2026-12-02, load average about 5 from other work; editable install):
    see the report printed by the script; the numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

BARS_MS = {"--help": 150.0, "list": 200.0, "ps": 200.0}
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def corral_exe() -> list[str]:
    exe = Path(sys.executable).with_name("corral")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "corral.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000


def import_breakdown(args: list[str], env: dict[str, str], rounds: int) -> dict[str, float]:
    """Self import time in ms per top-level package (each module's smallest over ``rounds``)."""
    code = "import sys; from corral.cli.main import main; sys.argv = ['corral', *sys.argv[1:]]; main()"
    best: dict[str, int] = {}
    for _ in range(rounds):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr.splitlines():
            m = _IMPORT_LINE.match(line)
            if m:
                name, self_us = m.group(4), int(m.group(1))
                best[name] = min(best.get(name, self_us), self_us)
    totals: dict[str, float] = defaultdict(float)
    for name, us in best.items():
        top = name.split(".")[0]
        if top.startswith("__editable__"):
            top = "__editable__ (import finder)"
        elif top not in ("corral", "corral_plugins") and top in sys.stdlib_module_names | {"_distutils_hack"}:
            top = "(stdlib)"
        totals[top] += us / 1000
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def wait_for_server(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"corral serve exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"corral serve did not listen within {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    opts = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="corral-bench-cli-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(CORRAL_HOST=f"127.0.0.1:{port}", CORRAL_MODELS=str(root / "models"),
               CORRAL_HOME=str(root / "home"))
    log = (root / "serve.log").open("wb")
    server = subprocess.Popen([*corral_exe(), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_server(port, server)
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        print(f"{opts.rounds} cold runs each; load average {load}; {sys.executable}")
        floor = [timed([sys.executable, "-c", "pass"], env) for _ in range(opts.rounds)]
        print(f"{'python -c pass':<16} median {statistics.median(floor):6.1f} ms "
              f"(min {min(floor):.1f}, max {max(floor):.1f})  the interpreter's own start")
        ok = True
        for args, bar in BARS_MS.items():
            runs = [timed([*corral_exe(), *args.split()], env) for _ in range(opts.rounds)]
            med = statistics.median(runs)
            verdict = "ok" if med <= bar else "OVER"
            ok &= med <= bar
            print(f"{'corral ' + args:<16} median {med:6.1f} ms (min {min(runs):.1f}, max {max(runs):.1f})"
                  f"  bar {bar:.0f} ms  ratio {med / bar:.2f}  {verdict}")
        for args in BARS_MS:
            parts = import_breakdown(args.split(), env, opts.rounds)
            total = sum(parts.values())
            shown = ", ".join(f"{name} {ms:.1f}" for name, ms in list(parts.items())[:8])
            print(f"imports of 'corral {args}': {total:.1f} ms: {shown}")
        return 0 if ok else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
