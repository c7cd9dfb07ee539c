"""Soak `corral serve`: mixed load on gemma3:270m for 30 minutes with a canary request every 10 s.

Load (all at once, over real HTTP): two chat clients, a client that drops streams mid-way, JSON-schema
requests, embeddings, and a hostile request every few seconds (bad schemas, huge integers and
keep_alive values, too many inputs, bad names, broken templates). A canary chat every 10 s measures
what one ordinary user sees.

Printed per minute: canary p50/p99 latency, the server's and the runners' RSS, requests and errors.
Bars (checked at the end):
  canary p99 over the run <= 2x its idle p99 (measured before the load starts);
  RSS (server + runners) grows <= 5 % from the end of warm-up to the end;
  zero 5xx answers, zero dropped connections and no ordinary (not hostile) request refused.

Usage:
  python bench/soak.py [--minutes 30] [--warmup 3] [--threads 2] [--slots 4] [--backend cpu|fake]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import _free_port, _prepare_model, _wait_ready  # noqa: E402

MODEL = "gemma3:270m"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                           "temperature": {"type": "integer", "minimum": -50, "maximum": 60}},
          "required": ["city", "temperature"]}
TOPICS = ["rivers", "bread", "mountains", "the moon", "bicycles", "tea", "libraries", "rain", "clocks",
          "owls"]


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


# (method, path, body): each must be answered with a 4xx, never a 5xx
HOSTILE: list[tuple[str, str, Any]] = [
    ("POST", "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False, "format": _nested(400)}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False,
                               "format": {"type": "array", "minItems": "many"}}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False,
                               "format": {"enum": [f"value {i}" for i in range(5000)]}}),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False,
                               "options": {"num_predict": 2**64}}),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 2**64}),
    ("POST", "/api/embed", {"model": MODEL, "input": ["x"] * 10_000}),
    ("POST", "/api/chat", {"model": "../../etc/passwd", "messages": []}),
    ("POST", "/api/create", {"model": "soak-broken", "from": MODEL, "template": "{{if 1}}" * 3000}),
    ("POST", "/api/create", {"model": "soak-broken", "from": MODEL, "template": "{{ nosuch .Prompt }}"}),
    ("POST", "/api/chat", "{not json"),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "hi", "keep_alive": "not a duration"}),
]


@dataclass
class Stats:
    canary: list[tuple[float, float]] = field(default_factory=list)  # (time, latency)
    # where each canary's time went: (time, slot wait, render+admit, prompt eval, generation), seconds
    phases: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    requests: int = 0
    errors_5xx: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # transport errors (not our own cancellations)
    failed: list[str] = field(default_factory=list)  # an ordinary request (not a hostile one) refused
    hostile_not_4xx: list[str] = field(default_factory=list)
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # (time, server, runners)

    def answer(self, what: str, status: int) -> None:
        self.requests += 1
        if status >= 500:
            self.errors_5xx.append(f"{what} -> {status}")
        elif status >= 400 and not what.startswith("hostile"):
            self.failed.append(f"{what} -> {status}")


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _role(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    text = b" ".join(argv).decode(errors="replace")
    if "runner" in text:
        return "runner"
    return "render worker" if "render" in text else "other child"


def _cpu_by_role(server: int) -> dict[str, float]:
    """CPU seconds so far of the server, its runners and its other children, and of this script."""
    out = {"server": _cpu_seconds(server), "load generator (this script)": sum(os.times()[:2])}
    for kid in _children(server):
        role = _role(kid)
        out[role] = out.get(role, 0.0) + _cpu_seconds(kid)
    return out


def _children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    kids = [int(p) for p in out]
    return kids + [g for k in kids for g in _children(k)]


async def _post(http: httpx.AsyncClient, stats: Stats, path: str, body: Any,
                what: str) -> httpx.Response | None:
    try:
        if isinstance(body, str):
            r = await http.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            r = await http.post(path, json=body)
    except httpx.HTTPError as exc:
        stats.dropped.append(f"{what}: {exc!r}")
        return None
    stats.answer(what, r.status_code)
    return r


async def chat_client(http: httpx.AsyncClient, stats: Stats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        topic = random.choice(TOPICS)
        await _post(http, stats, "/api/chat", {
            "model": MODEL, "stream": False, "options": {"num_predict": 48},
            "messages": [{"role": "user", "content": f"Write two sentences about {topic}."}]}, "chat")


async def dropping_client(http: httpx.AsyncClient, stats: Stats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        story = f"Tell a long story about {random.choice(TOPICS)}."
        body = {"model": MODEL, "stream": True, "options": {"num_predict": 200},
                "messages": [{"role": "user", "content": story}]}
        try:
            async with http.stream("POST", "/api/chat", json=body) as r:
                stats.answer("stream", r.status_code)
                n = 0
                async for _ in r.aiter_lines():
                    n += 1
                    if n >= random.randint(3, 12):
                        break  # leave mid-way: the server must stop decoding and free the slot
        except httpx.HTTPError as exc:
            stats.dropped.append(f"stream: {exc!r}")
        await asyncio.sleep(0.5)


async def schema_client(http: httpx.AsyncClient, stats: Stats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await _post(http, stats, "/api/generate", {
            "model": MODEL, "stream": False, "format": SCHEMA, "options": {"num_predict": 64},
            "prompt": f"The weather in a town known for {random.choice(TOPICS)}, as JSON."}, "schema")
        await asyncio.sleep(1.0)


async def embed_client(http: httpx.AsyncClient, stats: Stats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await _post(http, stats, "/api/embed", {"model": MODEL, "input": random.sample(TOPICS, 4)}, "embed")
        await asyncio.sleep(2.0)


async def hostile_client(http: httpx.AsyncClient, stats: Stats, stop: asyncio.Event, every: float) -> None:
    i = 0
    while not stop.is_set():
        method, path, body = HOSTILE[i % len(HOSTILE)]
        r = await _post(http, stats, path, body, f"hostile #{i % len(HOSTILE)}")
        if r is not None and not 400 <= r.status_code < 500:
            stats.hostile_not_4xx.append(f"#{i % len(HOSTILE)} {path} -> {r.status_code}: {r.text[:120]}")
        i += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def canary_once(http: httpx.AsyncClient, stats: Stats | None,
                      at: float = 0.0) -> float | None:
    t0 = time.perf_counter()
    try:
        r = await http.post("/api/chat", json={"model": MODEL, "stream": False,
                                               "options": {"num_predict": 8, "temperature": 0},
                                               "messages": [{"role": "user", "content": "Say hello."}]})
    except httpx.HTTPError as exc:
        if stats is not None:
            stats.dropped.append(f"canary: {exc!r}")
        return None
    took = time.perf_counter() - t0
    if stats is not None:
        stats.answer("canary", r.status_code)
        if r.status_code == 200:
            stats.phases.append((at, *_phases(r.json(), took)))
    return took if r.status_code == 200 else None


def _phases(body: dict[str, Any], took: float) -> tuple[float, float, float, float]:
    """The canary's wait for one of the model's slots (Ollama's load_duration: request start until a slot
    was its own), the rest of its time before its prompt's evaluation began (HTTP, template render,
    tokenizing, the loop's admission), its prompt evaluation (admission to first token), its generation."""
    slot = body.get("load_duration", 0) / 1e9
    prompt = body.get("prompt_eval_duration", 0) / 1e9
    gen = body.get("eval_duration", 0) / 1e9
    return slot, max(0.0, took - slot - prompt - gen), prompt, gen


def _phase_line(rows: list[tuple[float, ...]]) -> str:
    if not rows:
        return "no samples"
    parts = []
    for k, name in enumerate(("slot wait", "render+admit", "prompt eval", "generation"), start=1):
        vals = [r[k] for r in rows]
        parts.append(f"{name} {_pct(vals, 50) * 1000:.0f}/{_pct(vals, 99) * 1000:.0f}")
    return "p50/p99 ms: " + ", ".join(parts)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


async def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="corral-soak-"))
    models = tmp / "models"
    _prepare_model(models)
    port = _free_port()
    env = {**os.environ, "CORRAL_HOST": f"127.0.0.1:{port}", "CORRAL_MODELS": str(models),
           "CORRAL_HOME": str(tmp / "home"), "CORRAL_NUM_PARALLEL": str(args.slots),
           "CORRAL_KEEP_ALIVE": "-1", "CORRAL_BACKEND": args.backend}
    if args.backend == "fake":
        env["CORRAL_EXTRA_PLUGINS"] = "corral.testing.fake"
    log = tmp / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "corral.cli", "serve"], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    print(f"soak: {MODEL}, {args.minutes:g} min of load after the idle canary, {args.threads} threads, "
          f"{args.slots} slots, backend {args.backend}, canary every {args.canary_every:g} s, hostile every "
          f"{args.hostile_every:g} s; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start",
          flush=True)
    try:
        _wait_ready(url, "/api/version", proc)
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            r = await http.post("/api/create", json={"model": MODEL, "from": MODEL, "stream": False,
                                                     "parameters": {"num_thread": args.threads}})
            r.raise_for_status()
            await canary_once(http, None)  # load the model
            quiet = Stats()
            idle = [x for x in [await canary_once(http, quiet) for _ in range(args.idle_samples)] if x]
            idle_p99 = _pct(idle, 99)
            print(f"idle canary: p50 {_pct(idle, 50) * 1000:.0f} ms, p99 {idle_p99 * 1000:.0f} ms "
                  f"({len(idle)} samples); load average {os.getloadavg()[0]:.2f}", flush=True)
            print(f"             {_phase_line(quiet.phases)}", flush=True)
            stats = Stats()
            stop = asyncio.Event()
            workers = [asyncio.create_task(c(http, stats, stop)) for c in
                       (chat_client, chat_client, dropping_client, schema_client, embed_client)]
            workers.append(asyncio.create_task(hostile_client(http, stats, stop, args.hostile_every)))
            start = time.monotonic()
            end = start + args.minutes * 60
            cpu_before = _cpu_by_role(proc.pid)
            minute_rows: list[tuple[int, list[float], int, int]] = []
            next_canary = start
            minute = 0
            seen = 0
            while time.monotonic() < end:
                await asyncio.sleep(max(0.0, next_canary - time.monotonic()))
                next_canary += args.canary_every
                took = await canary_once(http, stats, time.monotonic() - start)
                if took is not None:
                    stats.canary.append((time.monotonic() - start, took))
                if time.monotonic() - start >= (minute + 1) * 60:
                    minute += 1
                    server = _rss_kib(proc.pid)
                    runners = sum(_rss_kib(p) for p in _children(proc.pid))
                    stats.rss.append((time.monotonic() - start, server, runners))
                    lat = [x for t, x in stats.canary if (minute - 1) * 60 <= t < minute * 60]
                    minute_rows.append((minute, lat, server, runners))
                    print(f"min {minute:3d}: canary p50 {_pct(lat, 50) * 1000:6.0f} ms  p99 "
                          f"{_pct(lat, 99) * 1000:6.0f} ms  ({len(lat)})  "
                          f"rss server {server / 1024:6.1f} MiB  "
                          f"runners {runners / 1024:6.1f} MiB  requests {stats.requests - seen:4d}  "
                          f"5xx {len(stats.errors_5xx)}  dropped {len(stats.dropped)}  "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
                    rows = [r for r in stats.phases if (minute - 1) * 60 <= r[0] < minute * 60]
                    print(f"         canary {_phase_line(rows)}", flush=True)
                    seen = stats.requests
            cpu_after = _cpu_by_role(proc.pid)
            stop.set()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for route in ("/api/tags", "/api/ps", "/metrics", "/api/version", "/v1/models"):
                stats.answer(f"GET {route}", (await http.get(route)).status_code)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = [x for t, x in stats.canary]
    run_p99 = _pct(lat, 99)
    warm = [r for r in stats.rss if r[0] >= args.warmup * 60]
    growth = float("nan")
    if len(warm) >= 2:
        first, last = warm[0][1] + warm[0][2], warm[-1][1] + warm[-1][2]
        growth = (last - first) / first * 100
    ok_lat = run_p99 <= 2 * idle_p99
    ok_rss = growth <= 5.0
    ok_err = not stats.errors_5xx and not stats.dropped and not stats.failed
    print(f"\ncanary over the run: p50 {_pct(lat, 50) * 1000:.0f} ms, p99 {run_p99 * 1000:.0f} ms, idle p99 "
          f"{idle_p99 * 1000:.0f} ms, ratio {run_p99 / idle_p99:.2f} (bar <= 2.00): "
          f"{'PASS' if ok_lat else 'FAIL'}")
    print(f"canary time by phase over the run: {_phase_line(stats.phases)}")
    wall = args.minutes * 60
    print("CPU use under the load (cores busy on average): " + ", ".join(
        f"{role} {(cpu_after[role] - cpu_before.get(role, 0.0)) / wall:.2f}" for role in cpu_after))
    print(f"load average at the end {os.getloadavg()[0]:.2f} (the idle canary and the load share the same "
          "cores with anything else running)")
    print(f"RSS (server + runners) after {args.warmup} min warm-up: {growth:+.1f} % (bar <= 5 %): "
          f"{'PASS' if ok_rss else 'FAIL'}")
    print(f"requests {stats.requests}, 5xx {len(stats.errors_5xx)}, "
          f"dropped connections {len(stats.dropped)}, ordinary requests refused {len(stats.failed)}, "
          f"hostile answered other than 4xx {len(stats.hostile_not_4xx)}: {'PASS' if ok_err else 'FAIL'}")
    for line in (stats.errors_5xx + stats.dropped + stats.failed + stats.hostile_not_4xx)[:20]:
        print("  ", line)
    if statistics.mean(lat or [0]) and not ok_lat:
        print("   (the canary shares 2 cores and the model's slots with the load)")
    return 0 if ok_lat and ok_rss and ok_err and not stats.hostile_not_4xx else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=3, help="minutes before the RSS baseline is taken")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--canary-every", type=float, default=10.0)
    ap.add_argument("--hostile-every", type=float, default=3.0)
    ap.add_argument("--idle-samples", type=int, default=10)
    args = ap.parse_args()
    # a SIGTERM still runs run()'s cleanup, so the server under test never outlives this script
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
