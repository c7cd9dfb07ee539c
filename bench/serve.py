"""Benchmark `corral serve` against llama.cpp's `llama-server`: throughput, time to first token, fairness.

Both servers get the same model (gemma3:270m, Q4_K_M), threads and slot count; llama-server runs as
`llama-server -m <gguf> -np SLOTS -c SLOTS*CTX -t THREADS`. Clients stream over the OpenAI API
(`/v1/completions`, `/v1/chat/completions`), which both servers speak.

Scenarios and the bars corral must meet:
  throughput  1, 4 and 8 concurrent streaming clients: aggregate tokens/s and mean time to first token;
              corral >= 0.95x llama-server with 1 client, >= 0.90x with 4.
  followup    a follow-up chat turn's time to first token <= 1.5x that of a fresh short prompt (corral).
  shared      (a) four users arrive at once with the same ~1200-token system prompt; corral's time to
              first token <= 0.5x llama-server's (which evaluates the shared prefix four times).
  stall       (b) one user streams while a ~1400-token prompt arrives; corral's longest gap between
              tokens <= 250 ms (llama-server stalls ~1.6 s while it evaluates the new prompt).

Usage:
  python bench/serve.py [--llama-server PATH] [--threads 2] [--slots 4] [--ctx 2048] [--tokens 128]
                        [--only throughput,followup,shared,stall]

llama-server comes from `python build_backends.py --tools` (the same pin and flags as corral's cpu
backend) and runs on the same CPU variant as corral; `--corral-only` measures corral alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import find_tool, stage_tool  # noqa: E402

MODEL = "gemma3:270m"
# Filler that tokenizes to roughly one token per word with Gemma's tokenizer.
_FILLER = ("The river runs past the old mill where the miller keeps his ledgers of grain and flour, "
           "and every morning the carts come down the hill to load the sacks before the market opens. ")


@dataclass
class Stream:
    """One streamed request: when it started, when each piece of text arrived."""

    started: float
    arrivals: list[float] = field(default_factory=list)
    text: str = ""

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.started if self.arrivals else float("nan")

    @property
    def max_gap(self) -> float:
        gaps = [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]
        return max(gaps, default=0.0)


@dataclass
class Server:
    """A running server process and how to talk to it."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    extra: dict[str, Any]  # request fields this server needs (llama-server: cache_prompt)
    model: str = MODEL

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, path: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server at {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"server at {url} not ready after {timeout:.0f} s")


def start_corral(models: Path, args: argparse.Namespace, log: Path,
                 speculative: bool | None = None) -> Server:
    """corral serving ``models``; ``speculative`` True or False sets CORRAL_SPECULATIVE (None: as
    the environment has it) and names the server "corral" or "corral no-spec"."""
    port = _free_port()
    env = {**os.environ, "CORRAL_HOST": f"127.0.0.1:{port}", "CORRAL_MODELS": str(models),
           "CORRAL_NUM_PARALLEL": str(args.slots), "CORRAL_CONTEXT_LENGTH": str(args.ctx),
           "CORRAL_KEEP_ALIVE": "-1", "CORRAL_BACKEND": args.backend}
    if speculative is not None:
        env["CORRAL_SPECULATIVE"] = "1" if speculative else "0"
    if args.backend == "fake":  # a dry run of this script's own logic: instant, meaningless numbers
        env["CORRAL_EXTRA_PLUGINS"] = "corral.testing.fake"
    proc = subprocess.Popen([sys.executable, "-m", "corral.cli", "serve"], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, "/api/version", proc)
    # The thread count is a model parameter in corral (num_thread): a derived model carries it.
    r = httpx.post(url + "/api/create", timeout=120, json={
        "model": "bench-gemma", "from": MODEL, "parameters": {"num_thread": args.threads}, "stream": False})
    r.raise_for_status()
    name = "corral no-spec" if speculative is False else "corral"
    return Server(name, url, proc, extra={}, model="bench-gemma")


# gemma3:270m is a base model without a chat template: corral renders chat turns in Gemma's format, while
# llama-server would fall back to ChatML (whose markers the model then repeats in loops that n-gram
# drafting decodes 64 tokens a step). Its built-in Gemma template renders the same prompt as corral,
# token for token, so both servers answer the same prompts.
SAME_TEMPLATE = ["--no-jinja", "--chat-template", "gemma"]


def start_llama_server(binary: str, gguf: Path, args: argparse.Namespace, log: Path) -> Server:
    port = _free_port()
    cmd = [binary, "-m", str(gguf), "-np", str(args.slots), "-c", str(args.slots * args.ctx),
           "-t", str(args.threads), "--host", "127.0.0.1", "--port", str(port), *SAME_TEMPLATE]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, "/health", proc)
    return Server("llama-server", url, proc, extra={"cache_prompt": True})


async def _sse(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"{url}: {event['error']}")
            yield event


async def stream_completion(client: httpx.AsyncClient, srv: Server, prompt: str, max_tokens: int,
                            started: float | None = None) -> Stream:
    body = {"model": srv.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            **srv.extra}
    s = Stream(started=started if started is not None else time.perf_counter())
    async for ev in _sse(client, srv.url + "/v1/completions", body):
        for choice in ev.get("choices") or []:
            if choice.get("text"):
                s.arrivals.append(time.perf_counter())
                s.text += choice["text"]
    return s


async def stream_chat(client: httpx.AsyncClient, srv: Server, messages: list[dict[str, str]],
                      max_tokens: int) -> Stream:
    body = {"model": srv.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, **srv.extra}
    s = Stream(started=time.perf_counter())
    async for ev in _sse(client, srv.url + "/v1/chat/completions", body):
        for choice in ev.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                s.arrivals.append(time.perf_counter())
                s.text += choice["delta"]["content"]
    return s


def filler(words: int) -> str:
    base = _FILLER.split()
    return " ".join(base[i % len(base)] for i in range(words))


# ---- scenarios -----------------------------------------------------------------------------------
async def throughput(srv: Server, clients: int, tokens: int) -> tuple[float, float]:
    """Aggregate generated tokens/s and mean time to first token for ``clients`` parallel streams."""
    async with httpx.AsyncClient(timeout=600) as c:
        t0 = time.perf_counter()
        streams = await asyncio.gather(*(
            stream_completion(c, srv, f"Story number {i}. Once upon a time, in a small village,", tokens, t0)
            for i in range(clients)))
        wall = max(s.arrivals[-1] for s in streams if s.arrivals) - t0
    n = sum(len(s.arrivals) for s in streams)
    return n / wall, statistics.mean(s.ttft for s in streams)


PAUSE_S = 0.5  # between turns of the follow-up scenario


async def followup(srv: Server, rounds: int = 3) -> tuple[float, float]:
    """Median (fresh short prompt TTFT, follow-up turn TTFT) on ~600-token conversations.

    Every round uses new text, so nothing is a cache hit from an earlier round."""
    fresh_t, follow_t = [], []
    async with httpx.AsyncClient(timeout=600) as c:
        for r in range(rounds):
            tag = f"[{time.time_ns()}-{r}] "
            history = [{"role": "system", "content": tag + filler(500)},
                       {"role": "user", "content": "Summarise that."}]
            first = await stream_chat(c, srv, history, 32)
            history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And why?"}]
            # A person reads the answer and types before the next turn; the pauses also keep each
            # request from sharing a step with the previous one's after-work: each TTFT is measured alone.
            await asyncio.sleep(PAUSE_S)
            follow_t.append((await stream_chat(c, srv, history, 8)).ttft)
            await asyncio.sleep(PAUSE_S)
            hello = [{"role": "user", "content": tag + "Hi there."}]
            fresh_t.append((await stream_chat(c, srv, hello, 8)).ttft)
            await asyncio.sleep(PAUSE_S)
    return statistics.median(fresh_t), statistics.median(follow_t)


async def shared_prefix(srv: Server, tag: str) -> float:
    """(a) Four users at once with the same ~1200-token system prompt: mean time to first token."""
    system = f"[{tag}] " + filler(1100)  # the tag makes the prefix new to both servers' caches
    async with httpx.AsyncClient(timeout=600) as c:
        streams = await asyncio.gather(*(
            stream_chat(c, srv, [{"role": "system", "content": system},
                                 {"role": "user", "content": f"Question {i}: what is in the text?"}], 8)
            for i in range(4)))
    return statistics.mean(s.ttft for s in streams)


async def stall(srv: Server, tag: str) -> float:
    """(b) Longest gap between tokens of a running stream while a ~1400-token prompt arrives."""
    async with httpx.AsyncClient(timeout=600) as c:
        runner = asyncio.create_task(stream_completion(c, srv, "Write a long story about a mill.", 200))
        await asyncio.sleep(1.0)  # the stream is decoding now
        long_prompt = f"[{tag}] " + filler(1300) + " Summarise."
        await stream_completion(c, srv, long_prompt, 4)
        s = await runner
    return s.max_gap


# ---- driver --------------------------------------------------------------------------------------
def _prepare_model(models: Path) -> Path:
    from corral.store.store import Store

    record = Store(models).ensure_default_model()
    assert record.model_path is not None
    return Path(record.model_path)


def _bar(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def run(args: argparse.Namespace) -> int:
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    models = Path(args.models) if args.models else work / "models"
    gguf = _prepare_model(models)
    binary = None
    if not args.corral_only:
        binary = str(stage_tool(find_tool("llama-server", args.llama_server), work / "llama-server"))
    servers = [start_corral(models, args, work / "corral.log")]
    if binary:
        servers.append(start_llama_server(binary, gguf, args, work / "llama-server.log"))
    else:
        print("llama-server not found (--llama-server PATH): measuring corral only, no ratios")
    print(f"model {MODEL} ({gguf}), threads {args.threads}, slots {args.slots}, ctx/slot {args.ctx}; "
          f"logs in {work}")
    failures = 0
    try:
        for srv in servers:  # warm-up: load the model, fill caches that every run would have
            async with httpx.AsyncClient(timeout=600) as c:
                await stream_completion(c, srv, "Warm up.", 4)
        results: dict[str, dict[str, Any]] = {s.name: {} for s in servers}
        if "throughput" in only:
            print(f"\n{'clients':>8} " + " ".join(f"{s.name + ' tok/s':>20} {'TTFT s':>8}" for s in servers)
                  + ("      ratio" if len(servers) == 2 else ""))
            for n in (int(x) for x in args.clients.split(",")):
                row = []
                for srv in servers:
                    tps, ttft = await throughput(srv, n, args.tokens)
                    results[srv.name][n] = tps
                    row.append(f"{tps:>20.1f} {ttft:>8.3f}")
                line = f"{n:>8} " + " ".join(row)
                if len(servers) == 2:
                    ratio = results["corral"][n] / results["llama-server"][n]
                    bar = {1: 0.95, 4: 0.90}.get(n)
                    verdict = f"  {_bar(ratio >= bar)} (>= {bar})" if bar else ""
                    failures += bool(bar and ratio < bar)
                    line += f"  {ratio:>8.2f}x{verdict}"
                print(line)
        if "followup" in only:
            print()
            for srv in servers:  # the bar is corral's; llama-server's figure shows what the model costs
                fresh, follow = await followup(srv)
                ok = follow <= 1.5 * fresh
                verdict = f"{_bar(ok)} (<= 1.5x)" if srv is servers[0] else "(reference)"
                failures += not ok and srv is servers[0]
                print(f"follow-up turn TTFT on {srv.name}: {follow:.3f} s vs fresh short prompt "
                      f"{fresh:.3f} s: {follow / fresh:.2f}x {verdict}")
        tag = str(time.time_ns())
        if "shared" in only:
            ttfts = {srv.name: await shared_prefix(srv, f"{tag}-{srv.name}") for srv in servers}
            print("\n(a) 4 users, same ~1200-token system prompt, mean TTFT: "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in ttfts.items()))
            if len(servers) == 2:
                ratio = ttfts["corral"] / ttfts["llama-server"]
                failures += ratio > 0.5
                print(f"    corral / llama-server = {ratio:.2f}x {_bar(ratio <= 0.5)} (<= 0.5x)")
        if "stall" in only:
            gaps = {srv.name: await stall(srv, f"{tag}-{srv.name}") for srv in servers}
            print("\n(b) longest stall of a running stream while a ~1400-token prompt arrives: "
                  + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in gaps.items()))
            ok = gaps["corral"] <= 0.25
            failures += not ok
            print(f"    corral {_bar(ok)} (<= 250 ms)")
    finally:
        for srv in servers:
            srv.stop()
    return 1 if failures else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--llama-server", help="path of llama.cpp's llama-server built from the same pin")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--slots", type=int, default=4, help="parallel sequences (-np / CORRAL_NUM_PARALLEL)")
    p.add_argument("--ctx", type=int, default=2048, help="context per slot (llama-server gets slots*ctx)")
    p.add_argument("--tokens", type=int, default=128, help="tokens generated per throughput stream")
    p.add_argument("--models", help="corral model store to use (default: a fresh temporary one)")
    p.add_argument("--only", default="throughput,followup,shared,stall")
    p.add_argument("--clients", default="1,4,8", help="concurrent clients for the throughput runs")
    p.add_argument("--backend", default="cpu", help="corral backend (\"fake\" checks the script itself)")
    p.add_argument("--corral-only", action="store_true", help="measure corral alone (no ratios)")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
