"""Benchmark speculative decoding: corral with prompt-lookup drafting against corral without it and
against llama-server with its n-gram drafting (`--spec-type ngram-*`), on an edit and a plain chat
workload, with 1 and 4 concurrent streams.

Every server gets the same model (gemma3:270m, Q4_K_M), threads and 4 slots; clients stream OpenAI chat
completions (temperature 0). Speed is decode tokens/s after the first token, with token counts from the
response's `usage`: for 1 stream, the four prompts one after another (tokens after each first token over
the sum of their times); for 4 streams, the four at once (all tokens after each stream's first, over the
time from the first stream's first token to the last token).

Workloads:
  edit  the prompt holds a 400-600-token source file of the pinned llama.cpp tree (one per stream) and
        asks for it back with one identifier renamed: most of the answer repeats the prompt.
  chat  a plain question whose answer does not repeat the prompt.
Bars: edit, 1 stream >= 2.0x corral without speculation and >= 1.1x llama-server's best n-gram mode;
      chat, 1 stream >= 0.97x corral without speculation; edit, 4 streams >= 1.0x llama-server -np 4.

Usage:
  python bench/speculative.py [--llama-server PATH] [--threads 2] [--rounds 3]
                              [--spec-types ngram-simple,ngram-mod] [--cases chat:1,edit:1] [--paired]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import find_tool, stage_tool  # noqa: E402
from serve import (  # noqa: E402
    MODEL,
    SAME_TEMPLATE,
    Server,
    _free_port,
    _prepare_model,
    _sse,
    _wait_ready,
    start_corral,
)

ROOT = Path(__file__).resolve().parents[1]
# The edit workload's files: the first four modules of the pinned llama.cpp tree's gguf-py package, in
# alphabetical order, whose head (whole lines up to FILE_CHARS characters) is 400-600 Gemma tokens. They
# never change between commits of corral (this repository's own files did, and so did the workload).
# gemma3:270m copies without renaming: alone and unspeculated its greedy answers repeat 90-98% of each
# file, while with four slots near-ties (decided by batch shapes, on either server) take some off the
# copy after 30-70 tokens. Each with an identifier of its head to rename, and the new name.
VENDOR = ROOT / "vendor" / "llama.cpp"
SOURCES = [
    ("gguf-py/gguf/constants.py", "sampling", "decoding"),
    ("gguf-py/gguf/gguf_reader.py", "data", "payload"),
    ("gguf-py/gguf/lazy.py", "kwargs", "options"),
    ("gguf-py/gguf/metadata.py", "Metadata", "ModelInfo"),
]
FILE_CHARS = 1800
CHAT = ["Explain in a few paragraphs why the sky is blue and why sunsets are red.",
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "What are the main differences between a violin and a cello? Answer in detail.",
        "Describe how bread is made, from the wheat field to the bakery shelf."]


def edit_messages(i: int) -> list[dict[str, str]]:
    path, old, new = SOURCES[i % len(SOURCES)]
    if not (VENDOR / path).exists():
        sys.exit(f"{VENDOR / path} is missing: run `python build_backends.py` (it extracts the pinned tree)")
    text = (VENDOR / path).read_text()
    text = text[: text.rfind("\n", 0, FILE_CHARS) + 1]
    ask = f"Repeat the whole text exactly, changing only the word {old} to {new} everywhere."
    return [{"role": "user", "content": f"Here is the start of {path}:\n\n```python\n{text}```\n\n{ask}"}]


async def one_stream(c: httpx.AsyncClient, srv: Server, messages: list[dict[str, str]],
                     max_tokens: int) -> tuple[float, float, int]:
    """(first token time, last token time, completion tokens)."""
    body: dict[str, Any] = {"model": srv.model, "messages": messages, "max_tokens": max_tokens,
                            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                            **srv.extra}
    first = last = 0.0
    tokens = 0
    async for ev in _sse(c, srv.url + "/v1/chat/completions", body):
        for choice in ev.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                last = time.perf_counter()
                first = first or last
        if ev.get("usage"):
            tokens = int(ev["usage"].get("completion_tokens") or 0)
    return first, last, tokens


async def decode_rate(srv: Server, workload: str, streams: int, max_tokens: int) -> float:
    def messages(i: int) -> list[dict[str, str]]:
        return edit_messages(i) if workload == "edit" else [{"role": "user", "content": CHAT[i % len(CHAT)]}]

    if streams == 1:
        # Every prompt in turn: where a small model's greedy answer leaves its source turns on near-ties
        # in its logits, so one prompt alone measures that prompt's luck more than speed. A connection
        # per request: llama-server at the pin was seen to exit (cleanly, mid-run) between streamed
        # requests sent on one kept-alive connection.
        alone = []
        for i in range(len(SOURCES)):
            async with httpx.AsyncClient(timeout=900) as c:
                alone.append(await one_stream(c, srv, messages(i), max_tokens))
        spent = sum(last - first for first, last, _ in alone)
        return sum(n - 1 for _, _, n in alone) / spent if spent > 0 else float("nan")
    async with httpx.AsyncClient(timeout=900) as c:
        got = await asyncio.gather(*(one_stream(c, srv, messages(i), max_tokens) for i in range(streams)))
    t0 = min(f for f, _, _ in got)
    t1 = max(t for _, t, _ in got)
    return sum(n - 1 for _, _, n in got) / (t1 - t0)


def start_llama(binary: str, gguf: Path, args: argparse.Namespace, spec_type: str | None,
                log: Path) -> Server:
    port = _free_port()
    cmd = [binary, "-m", str(gguf), "-np", "4", "-c", str(4 * args.ctx), "-t", str(args.threads),
           "--host", "127.0.0.1", "--port", str(port), *SAME_TEMPLATE]
    if spec_type:
        cmd += ["--spec-type", spec_type]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, "/health", proc)
    return Server(f"llama-server {spec_type or 'no-spec'}", url, proc, extra={"cache_prompt": True})


CASES = [("edit", 1), ("chat", 1), ("edit", 4), ("chat", 4)]


async def measure(srv: Server, args: argparse.Namespace) -> dict[tuple[str, int], float]:
    async with httpx.AsyncClient(timeout=900) as c:  # warm-up: load the model
        await one_stream(c, srv, [{"role": "user", "content": "Hi"}], 4)
    out = {}
    for workload, streams in args.cases:
        tokens = args.edit_tokens if workload == "edit" else args.chat_tokens
        rates = [await decode_rate(srv, workload, streams, tokens) for _ in range(args.rounds)]
        out[(workload, streams)] = statistics.median(rates)
        print(f"  {srv.name:>26}  {workload} x{streams}: {out[(workload, streams)]:7.1f} tok/s "
              f"(rounds: {', '.join(f'{r:.1f}' for r in rates)})", flush=True)
    return out


async def paired(args: argparse.Namespace) -> int:
    """corral with and without speculation, both up at once, measured in alternating rounds (ABBA...), so
    that each pair of measurements shares the machine's load: the median of the per-round ratios holds
    on a shared machine where two sequential runs would not."""
    work = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    models = Path(args.models) if args.models else work / "models"
    _prepare_model(models)
    args.slots, args.backend = 4, "cpu"
    print(f"model {MODEL}, threads {args.threads}, paired rounds: {args.rounds}; logs in {work}")
    on = start_corral(models, args, work / "corral.log", speculative=True)
    off = start_corral(models, args, work / "corral-nospec.log", speculative=False)
    failures = 0
    try:
        for srv in (on, off):
            async with httpx.AsyncClient(timeout=900) as c:  # warm-up: load the model
                await one_stream(c, srv, [{"role": "user", "content": "Hi"}], 4)
        for workload, streams in args.cases:
            tokens = args.edit_tokens if workload == "edit" else args.chat_tokens
            ratios, rates_on, rates_off = [], [], []
            for r in range(args.rounds):
                order = (on, off) if r % 2 == 0 else (off, on)
                got = {srv.name: await decode_rate(srv, workload, streams, tokens) for srv in order}
                rates_on.append(got[on.name])
                rates_off.append(got[off.name])
                ratios.append(got[on.name] / got[off.name])
            ratio = statistics.median(ratios)
            bar = {("edit", 1): 2.0, ("chat", 1): 0.97}.get((workload, streams))
            verdict = "" if bar is None else f" {_bar(ratio >= bar)} (>= {bar})"
            failures += bar is not None and ratio < bar
            print(f"{workload} x{streams}: corral {statistics.median(rates_on):.1f} tok/s, without "
                  f"speculation {statistics.median(rates_off):.1f}; median ratio {ratio:.3f}x{verdict} "
                  f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)})", flush=True)
    finally:
        on.stop()
        off.stop()
    return 1 if failures else 0


def _bar(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    models = Path(args.models) if args.models else work / "models"
    gguf = _prepare_model(models)
    args.slots, args.backend = 4, "cpu"
    print(f"model {MODEL}, threads {args.threads}, 4 slots, ctx/slot {args.ctx}, median of {args.rounds} "
          f"rounds; logs in {work}")
    results: dict[str, dict[tuple[str, int], float]] = {}
    starters: list[Any] = [lambda: start_corral(models, args, work / "corral.log", speculative=True),
                           lambda: start_corral(models, args, work / "corral-nospec.log", speculative=False)]
    if not args.corral_only:
        binary = str(stage_tool(find_tool("llama-server", args.llama_server), work / "llama-server"))
        for st in args.spec_types.split(","):
            starters.append(lambda st=st: start_llama(binary, gguf, args, st, work / f"llama-{st}.log"))
    for start in starters:  # one server at a time: each has the machine to itself
        srv = start()
        try:
            results[srv.name] = await measure(srv, args)
        finally:
            srv.stop()
    me, base = results["corral"], results["corral no-spec"]
    failures = 0
    print()

    def check(label: str, ratio: float, bar: float) -> None:
        nonlocal failures
        failures += ratio < bar
        print(f"{label}: {ratio:.2f}x {_bar(ratio >= bar)} (>= {bar})")

    if ("edit", 1) in me:
        check("edit x1, corral / corral without speculation", me[("edit", 1)] / base[("edit", 1)], 2.0)
    if ("chat", 1) in me:
        check("chat x1, corral / corral without speculation", me[("chat", 1)] / base[("chat", 1)], 0.97)
    llama = {k: v for k, v in results.items() if k.startswith("llama-server")}
    if llama and set(args.cases) == set(CASES):
        best1 = max(llama, key=lambda k: llama[k][("edit", 1)])
        check(f"edit x1, corral / {best1}", me[("edit", 1)] / llama[best1][("edit", 1)], 1.1)
        best4 = max(llama, key=lambda k: llama[k][("edit", 4)])
        check(f"edit x4, corral / {best4} (-np 4)", me[("edit", 4)] / llama[best4][("edit", 4)], 1.0)
        best4c = max(llama, key=lambda k: llama[k][("chat", 4)])
        print(f"chat x4, corral / {best4c} (-np 4): {me[('chat', 4)] / llama[best4c][('chat', 4)]:.2f}x "
              "(reference)")
    return 1 if failures else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--llama-server", help="path of llama.cpp's llama-server built from the same pin")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--ctx", type=int, default=2048, help="context per slot")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--edit-tokens", type=int, default=400, help="max tokens of an edit answer")
    p.add_argument("--chat-tokens", type=int, default=200, help="max tokens of a chat answer")
    p.add_argument("--spec-types", default="ngram-simple,ngram-mod",
                   help="llama-server --spec-type values to try (the best is the bar)")
    p.add_argument("--models", help="corral model store to use (default: a fresh temporary one)")
    p.add_argument("--corral-only", action="store_true", help="measure corral alone (no llama-server)")
    p.add_argument("--paired", action="store_true",
                   help="corral against itself without speculation, in alternating rounds (a busy machine)")
    p.add_argument("--cases", default=",".join(f"{w}:{n}" for w, n in CASES),
                   help="workload:streams pairs to measure (default: all; the llama-server bars need all)")
    args = p.parse_args()
    args.cases = [(w, int(n)) for w, n in (c.split(":") for c in args.cases.split(","))]
    if not all(c in CASES for c in args.cases):
        p.error(f"--cases: choose from {','.join(f'{w}:{n}' for w, n in CASES)}")
    sys.exit(asyncio.run(paired(args) if args.paired else run(args)))


if __name__ == "__main__":
    main()
