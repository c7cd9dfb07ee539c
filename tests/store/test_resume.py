"""kill -9 in the middle of a pull, then pull again: finished ranges are never fetched again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from corral.store import Store, TransferSettings
from corral.store import manifest as mf
from corral.testing.registry import TestRegistry

from .conftest import collect

SETTINGS = dict(parts=8, min_part=128 * 1024, max_part=128 * 1024, parallel=2, retries=2, backoff=0.05,
                stall_timeout=5.0, save_interval=0.0, disk_margin=0)
CHILD = """
import asyncio, sys
from corral.store import Store, TransferSettings
store = Store(sys.argv[1], transfer=TransferSettings(**{settings}))
async def main():
    async for _ in store.pull(sys.argv[2], insecure=True):
        pass
asyncio.run(main())
"""


def _sidecar(store_root: Path) -> Path | None:
    found = list((store_root / "blobs" / ".corral-tmp").glob("*.partial.json"))
    return found[0] if found else None


def test_kill_9_then_resume(tmp_path: Path, registry: TestRegistry) -> None:
    blob = os.urandom(8 * 128 * 1024)
    registry.add_model("library/big:latest", [(mf.MODEL, blob)])
    digest = "sha256:" + __import__("hashlib").sha256(blob).hexdigest()
    registry.faults.bytes_per_second = 400_000  # each 128 KiB part takes ~0.3 s
    root = tmp_path / "models"
    name = f"{registry.host}/library/big"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(settings=SETTINGS), str(root), name])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            side = _sidecar(root)
            if side is not None:
                try:
                    parts = json.loads(side.read_text())["parts"]
                except (ValueError, OSError):
                    parts = []
                if sum(p["completed"] == p["size"] for p in parts) >= 3:
                    break
            time.sleep(0.02)
        else:
            raise AssertionError("the child pull never got going")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    store = Store(root, transfer=TransferSettings(**SETTINGS))
    assert not store.blob_path(digest).exists()  # nothing unverified at the final path
    side = _sidecar(root)
    assert side is not None
    parts = json.loads(side.read_text())["parts"]
    done = sum(p["completed"] for p in parts)
    assert 0 < done < len(blob)
    mark = len(registry.log)
    registry.faults.bytes_per_second = 0
    collect(store.pull(name, insecure=True))
    assert store.blob_path(digest).read_bytes() == blob
    again = [a for a in registry.log[mark:] if a.method == "GET" and a.path.endswith(digest)]
    # Exactly the missing bytes were fetched, and no request touched a range already on disk.
    assert sum(a.sent for a in again) == len(blob) - done
    for a in again:
        assert a.range is not None
        start, end = a.range
        for p in parts:
            have_lo, have_hi = p["offset"], p["offset"] + p["completed"]  # [lo, hi) on disk
            assert end < have_lo or start >= have_hi, (a.range, p)
    assert not list((root / "blobs" / ".corral-tmp").iterdir())


def test_two_processes_on_one_store_download_once(tmp_path: Path, registry: TestRegistry) -> None:
    blob = os.urandom(4 * 128 * 1024)
    registry.add_model("library/big:latest", [(mf.MODEL, blob)])
    digest = "sha256:" + __import__("hashlib").sha256(blob).hexdigest()
    registry.faults.bytes_per_second = 300_000  # the child's download takes about a second
    root = tmp_path / "models"
    name = f"{registry.host}/library/big"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(settings=SETTINGS), str(root), name])
    try:
        deadline = time.monotonic() + 30
        while _sidecar(root) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        # The other process holds the blob's flock: this pull waits for it, then finds the blob.
        progress = collect(Store(root, transfer=TransferSettings(**SETTINGS)).pull(name, insecure=True))
        first = next(p for p in progress if p.digest == digest)
        assert first.completed == 0  # it was not present yet: this pull joined through the lock
    finally:
        assert child.wait(30) == 0
    assert sum(a.sent for a in registry.requests("GET", digest)) == len(blob)
    assert Store(root).blob_path(digest).read_bytes() == blob
