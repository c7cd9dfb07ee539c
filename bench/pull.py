"""Cost of pulling a ~250 MB model from the in-process registry: time, peak RSS, kill -9 and resume.

Run: ``python bench/pull.py [--size-mb 250] [--rate-mbps 0]``. The registry serves a blob of random
bytes from a file (in this process, on threads); each pull runs in a child process whose peak RSS
is read with ``wait4``, next to a child that only imports the store, so the difference is what
the pull itself costs. Then a throttled pull is killed with SIGKILL halfway and run again: the
second run must fetch only the bytes the first did not record as done.

Results on the 2-core dev VM (2026-11-27; the registry is Python's threaded http.server in the
same machine, which is what limits throughput):
    pull of 250 MB: 6.7 s (37 MB/s) incl. sha256 verify + fsync; peak RSS 47.2 MiB vs 32.6 MiB for
    an idle child (+14.6 MiB); a 50 MB pull adds 10.2 MiB: memory is bounded by parts x 1 MiB
    write buffers, not by the blob size.
    kill -9 at 51%: 126.9 MB recorded on disk; the re-run sent 3 range requests for exactly the
    missing 123.1 MB (3.5 s), verified the sha256 and committed the blob.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corral.store import manifest as mf
from corral.testing.registry import TestRegistry

CHILD = """
import asyncio, sys, time
from corral.store import Store
store = Store(sys.argv[1])
if sys.argv[2] == "-":
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(f"0 {hwm}")
    sys.exit(0)
async def main():
    async for _ in store.pull(sys.argv[2], insecure=True):
        pass
t = time.monotonic()
asyncio.run(main())
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(f"{time.monotonic() - t:.3f} {hwm}")
"""


def run_child(root: Path, name: str) -> tuple[float, float, int]:
    """(pull seconds as the child measured them, wall seconds, peak RSS in KiB from VmHWM)."""
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), name], stdout=subprocess.PIPE, check=True)
    wall = time.monotonic() - t
    seconds, hwm = proc.stdout.decode().split()
    return float(seconds), wall, int(hwm)


def write_blob(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=int, default=250)
    ap.add_argument("--kill-rate-mbps", type=float, default=100.0, help="registry rate for the kill test")
    args = ap.parse_args()
    size = args.size_mb * 1000 * 1000
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp_s:
        tmp = Path(tmp_s)
        blob = tmp / "blob"
        write_blob(blob, size)
        with TestRegistry(tmp / "registry") as reg:
            digest, _ = reg.add_blob_file(blob)
            blob.unlink()
            cfg, csize = reg.add_blob(b'{"model_format":"gguf"}')
            reg.manifests["library/big:latest"] = json.dumps({
                "schemaVersion": 2, "mediaType": mf.MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": mf.CONFIG_MEDIA_TYPE, "digest": cfg, "size": csize},
                "layers": [{"mediaType": mf.MODEL, "digest": digest, "size": size}]}).encode()
            name = f"{reg.host}/library/big"
            reg.faults.chunk_size = 1 << 20

            _, _, base_rss = run_child(tmp / "m0", "-")
            pull_s, wall, rss = run_child(tmp / "m1", name)
            print(f"pull of {size / 1e6:.0f} MB: {pull_s:.2f} s in the pull "
                  f"({size / 1e6 / pull_s:.0f} MB/s), {wall:.2f} s with interpreter start")
            print(f"peak RSS: {rss / 1024:.1f} MiB (an idle child that imports the store: "
                  f"{base_rss / 1024:.1f} MiB; the pull adds {(rss - base_rss) / 1024:.1f} MiB)")

            # kill -9 halfway through a throttled pull, then pull again.
            reg.faults.bytes_per_second = args.kill_rate_mbps * 1e6 / 16  # per part; 16 parts in parallel
            root = tmp / "m2"
            first = len(reg.log)
            proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), name], stdout=subprocess.DEVNULL)
            side = root / "blobs" / ".corral-tmp" / f"sha256-{digest[7:]}.partial.json"
            while True:
                time.sleep(0.05)
                try:
                    done = sum(p["completed"] for p in json.loads(side.read_text())["parts"])
                except (OSError, ValueError):
                    continue
                if done >= size // 2:
                    break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            recorded = sum(p["completed"] for p in json.loads(side.read_text())["parts"])
            served = sum(a.sent for a in reg.log[first:] if a.method == "GET" and a.path.endswith(digest))
            reg.faults.bytes_per_second = 0
            mark = len(reg.log)
            pull_s, _, rss = run_child(root, name)
            again = [a for a in reg.log[mark:] if a.method == "GET" and a.path.endswith(digest)]
            refetched = sum(a.sent for a in again)
            print(f"kill -9 at {recorded / size:.0%}: {served / 1e6:.1f} MB had been sent, "
                  f"{recorded / 1e6:.1f} MB recorded on disk")
            print(f"resume: {len(again)} range requests fetched {refetched / 1e6:.1f} MB "
                  f"(= size - recorded: {refetched == size - recorded}) in {pull_s:.2f} s, "
                  f"peak RSS {rss / 1024:.1f} MiB; blob verified: "
                  f"{(root / 'blobs' / f'sha256-{digest[7:]}').stat().st_size == size}")


if __name__ == "__main__":
    main()
