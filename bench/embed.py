"""Benchmark embeddings: 256 short inputs in one corral `/api/embed` call against llama-server's
`/v1/embeddings` with the same inputs, model and pooling.

Both servers get gemma3:270m (Q4_K_M) and the same threads; Gemma has no pooling of its own, so both
mean-pool (corral does for every causal model; llama-server gets `--pooling mean`). Both may pack up to
SLOTS inputs and SLOTS*CTX tokens into one decode: llama-server runs `--embeddings -np SLOTS -c SLOTS*CTX
-b/-ub SLOTS*CTX` (its batch fills across its slots), corral gets a SLOTS*CTX context (its embedding
batch; it packs up to 64 inputs). Speed is inputs per second over the whole call (wall time from the
request to the last byte), the median of several rounds, both servers up at once and taking turns. The
vectors of both servers are compared (cosine), for information: corral's packed
vectors are within cosine 0.999 of its unpacked ones, which equal llama-server -np 1's; llama-server's
own with many slots have been seen to differ more (cosine 0.75-0.8 at -np 64 on Gemma).

Bar: corral >= 1.0x llama-server.

Usage:
  python bench/embed.py [--llama-server PATH] [--threads 2] [--inputs 256] [--slots 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import find_tool, stage_tool  # noqa: E402
from serve import Server, _free_port, _prepare_model, _wait_ready, start_corral  # noqa: E402

_WORDS = ("river mill ledger grain flour morning cart hill sack market bread oven salt water stone "
          "bridge lantern harbour sail rope net fish gull tide shell sand dune wind cloud rain").split()


def inputs(n: int) -> list[str]:
    """``n`` different short sentences (5-12 words: a search query or a title each)."""
    out = []
    for i in range(n):
        k = 5 + i % 8
        out.append(" ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(k)) + f" {i}.")
    return out


def start_llama(binary: str, gguf: Path, args: argparse.Namespace, log: Path) -> Server:
    port = _free_port()
    n_ctx = args.slots * args.ctx
    cmd = [binary, "-m", str(gguf), "--embeddings", "--pooling", "mean", "-np", str(args.slots),
           "-c", str(n_ctx), "-b", str(n_ctx), "-ub", str(n_ctx), "-t", str(args.threads),
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, "/health", proc)
    return Server("llama-server", url, proc, extra={})


def embed(srv: Server, texts: list[str]) -> tuple[float, np.ndarray]:
    """(seconds for the call, the vectors)."""
    t0 = time.perf_counter()
    if srv.name == "corral":
        r = httpx.post(srv.url + "/api/embed", json={"model": srv.model, "input": texts}, timeout=900)
        r.raise_for_status()
        vecs: list[Any] = r.json()["embeddings"]
    else:
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": texts}, timeout=900)
        r.raise_for_status()
        vecs = [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    dt = time.perf_counter() - t0
    v = np.asarray(vecs, dtype=np.float64)
    return dt, v / np.linalg.norm(v, axis=1, keepdims=True)


def report(srv: Server, texts: list[str], times: list[float]) -> float:
    rate = len(texts) / statistics.median(times)
    print(f"  {srv.name:>12}: {rate:7.1f} inputs/s (rounds: {', '.join(f'{t:.2f} s' for t in times)})",
          flush=True)
    return rate


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    models = Path(args.models) if args.models else work / "models"
    gguf = _prepare_model(models)
    texts = inputs(args.inputs)
    args.backend = "cpu"
    print(f"model gemma3:270m, threads {args.threads}, {len(texts)} inputs in one call, median of "
          f"{args.rounds} rounds, the servers' rounds alternating; logs in {work}")
    one_slot = argparse.Namespace(**{**vars(args), "slots": 1, "ctx": args.slots * args.ctx})
    servers = [start_corral(models, one_slot, work / "corral.log")]
    try:
        if not args.corral_only:
            binary = str(stage_tool(find_tool("llama-server", args.llama_server), work / "llama-server"))
            servers.append(start_llama(binary, gguf, args, work / "llama-server.log"))
        # Both are up at once and take turns (ABBA...): a machine whose speed drifts over minutes (a
        # shared one) slows both sides alike. Each answers alone: the other is idle meanwhile.
        for srv in servers:
            embed(srv, texts[:2])  # warm-up: load the model
        times: dict[str, list[float]] = {srv.name: [] for srv in servers}
        vecs: dict[str, np.ndarray] = {}
        for r in range(args.rounds):
            for srv in servers if r % 2 == 0 else servers[::-1]:
                dt, vecs[srv.name] = embed(srv, texts)
                times[srv.name].append(dt)
        rates = [report(srv, texts, times[srv.name]) for srv in servers]
    finally:
        for srv in servers:
            srv.stop()
    if args.corral_only:
        return 0
    cos = (vecs["corral"] * vecs["llama-server"]).sum(axis=1)
    print(f"  vectors: cosine corral/llama-server min {cos.min():.5f}, median {float(np.median(cos)):.5f}")
    ratio = rates[0] / rates[1]
    print(f"\ncorral / llama-server: {ratio:.2f}x {'PASS' if ratio >= 1.0 else 'FAIL'} (>= 1.0)")
    return 0 if ratio >= 1.0 else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--llama-server", help="path of llama.cpp's llama-server built from the same pin")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--inputs", type=int, default=256)
    p.add_argument("--slots", type=int, default=64, help="llama-server's -np (inputs per decode)")
    p.add_argument("--ctx", type=int, default=64, help="tokens per slot (a decode holds slots*ctx)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--models", help="corral model store to use (default: a fresh temporary one)")
    p.add_argument("--corral-only", action="store_true", help="measure corral alone (no llama-server)")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
