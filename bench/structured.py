"""Benchmark structured output: decode speed under `response_format` against corral unconstrained and
against llama-server with the same `response_format`, and the cost of compiling a new schema.

Every server gets the same model (gemma3:270m, Q4_K_M), threads and one slot; clients stream OpenAI chat
completions (`/v1/chat/completions`, temperature 0). Decode speed is tokens/s after the first token.

corral runs twice: as configured by default (speculative decoding on) and with CORRAL_SPECULATIVE=0.

Bars:
  json_schema (8 nested properties) and json_object >= 0.90x unconstrained, both without speculation
  (the constraint's own cost: with speculation the rates follow how much each answer repeats itself,
  which differs between the formats' answers; that ratio is printed too);
  each, as configured by default, >= 1.0x llama-server with the same response_format;
  a first request's schema compile <= 20 ms for a 50-property schema (measured in-process: GBNF form,
  schema form, llguidance compile, on gemma's 262k vocabulary; the tokenizer is built once per model
  and reported apart).

Usage:
  python bench/structured.py [--llama-server PATH] [--threads 2] [--tokens 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import find_tool, stage_tool  # noqa: E402
from serve import MODEL, Server, _prepare_model, _sse, start_corral, start_llama_server  # noqa: E402

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                                     "zip": {"type": "string"}},
                    "required": ["street", "city", "zip"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "active": {"type": "boolean"},
        "score": {"type": "number"},
        "notes": {"type": "string"},
    },
    "required": ["name", "age", "email", "address", "tags", "active", "score", "notes"],
}
PROMPT = ("Invent a detailed customer record for a bookshop's database and give it as JSON with the "
          "fields name, age, email, address (street, city, zip), tags, active, score and notes.")
FORMATS: dict[str, dict[str, Any] | None] = {
    "unconstrained": None,
    "json_schema": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    "json_object": {"type": "json_object"},
}


async def decode_rate(srv: Server, fmt: dict[str, Any] | None, tokens: int) -> tuple[float, int]:
    """Tokens/s after the first token, and the tokens counted (one streamed chunk is one token)."""
    body: dict[str, Any] = {"model": srv.model, "messages": [{"role": "user", "content": PROMPT}],
                            "max_tokens": tokens, "temperature": 0, "stream": True, **srv.extra}
    if fmt is not None:
        body["response_format"] = fmt
    arrivals: list[float] = []
    async with httpx.AsyncClient(timeout=600) as c:
        async for ev in _sse(c, srv.url + "/v1/chat/completions", body):
            for choice in ev.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    arrivals.append(time.perf_counter())
    if len(arrivals) < 2:
        return float("nan"), len(arrivals)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), len(arrivals)


def compile_cost(gguf: Path, rounds: int) -> tuple[float, float]:
    """(one-time tokenizer build s, median first-request compile ms of a new 50-property schema)."""
    from corral.prompts import schema_to_gbnf
    from corral.prompts.schemanorm import json_constraint
    from corral_plugins._llama import library
    from corral_plugins._llama.cpuvariant import choose_variant
    from corral_plugins._llama.guidance import Guidance
    from corral_plugins._llama.model import LlamaModel

    lib_dir = Path(__file__).resolve().parents[1] / "plugins" / "cpu" / "_lib"
    native = library.load(lib_dir, [choose_variant(lib_dir).path])
    model = LlamaModel(native, gguf, vocab_only=True)
    guidance = Guidance(native, model)
    t0 = time.perf_counter()
    guidance.guide(json_constraint({"type": "object"}))
    build = time.perf_counter() - t0
    costs = []
    for r in range(rounds):
        schema = {"type": "object", "required": [f"field_{r}_{i}" for i in range(0, 50, 2)],
                  "properties": {f"field_{r}_{i}": {"type": ["string", "integer", "boolean"][i % 3]}
                                 for i in range(50)}}
        t0 = time.perf_counter()
        schema_to_gbnf(schema)  # the request's check and GBNF form (what the engine does)
        guide = guidance.guide(json_constraint(schema))
        costs.append((time.perf_counter() - t0) * 1000)
        assert guide is not None
    model.free()
    return build, statistics.median(costs)


def _bar(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    models = Path(args.models) if args.models else work / "models"
    gguf = _prepare_model(models)
    args.slots, args.ctx, args.backend = 1, 4096, "cpu"
    servers = [start_corral(models, args, work / "corral.log", speculative=True),
               start_corral(models, args, work / "corral-nospec.log", speculative=False)]
    if not args.corral_only:
        binary = str(stage_tool(find_tool("llama-server", args.llama_server), work / "llama-server"))
        servers.append(start_llama_server(binary, gguf, args, work / "llama-server.log"))
    print(f"model {MODEL}, threads {args.threads}, one slot, {args.tokens} tokens, median of {args.rounds} "
          f"rounds; logs in {work}")
    rates: dict[str, dict[str, float]] = {s.name: {} for s in servers}
    failures = 0
    try:
        for srv in servers:  # warm-up: load, and build what a first constrained request builds
            for fmt in FORMATS.values():
                await decode_rate(srv, fmt, 8)
        got: dict[tuple[str, str], list[tuple[float, int]]] = {}
        for srv in servers:
            # The formats take turns within each round, so a machine that slows down for a while slows
            # all of them alike. Each round repeats the same requests: from the second on, corral drafts
            # from the answers it gave before.
            for _ in range(args.rounds):
                for name, fmt in FORMATS.items():
                    got.setdefault((srv.name, name), []).append(await decode_rate(srv, fmt, args.tokens))
            for name in FORMATS:
                runs = got[(srv.name, name)]
                rates[srv.name][name] = statistics.median(r for r, _ in runs)
                rates[srv.name][name + " tokens"] = statistics.median(n for _, n in runs)
                print(f"  {srv.name:>14} {name:>14}: rounds {', '.join(f'{r:.1f}' for r, _ in runs)} tok/s",
                      flush=True)
    finally:
        for srv in servers:
            srv.stop()
    print(f"\n{'format':>14} " + " ".join(f"{s.name + ' tok/s':>22}" for s in servers))
    for name in FORMATS:
        cells = (f"{rates[s.name][name]:>16.1f} ({rates[s.name][name + ' tokens']:>3.0f})" for s in servers)
        print(f"{name:>14} " + " ".join(cells))
    # What the constraint costs, on the same text: without speculation both answers decode one token a
    # step. With it, the rates follow how much of each answer repeats (gemma3:270m's unconstrained
    # answer here is a loop drafted up to 64 tokens a step, the JSON ones are mostly new text), so that
    # ratio is shown for information only.
    print("\nconstrained vs unconstrained (no-spec: the constraint's cost; corral: with speculation)")
    for name in FORMATS:
        if name == "unconstrained":
            continue
        own = rates["corral no-spec"][name] / rates["corral no-spec"]["unconstrained"]
        failures += own < 0.90
        spec = rates["corral"][name] / rates["corral"]["unconstrained"]
        print(f"{name:>14}   no-spec {own:5.2f}x {_bar(own >= 0.90)} (>= 0.90)   corral {spec:5.2f}x")
    if not args.corral_only:
        print("\nagainst llama-server, the same response_format")
        for name in FORMATS:
            vs = rates["corral"][name] / rates["llama-server"][name]
            plain = rates["corral no-spec"][name] / rates["llama-server"][name]
            bar = name != "unconstrained"
            failures += bar and vs < 1.0
            print(f"{name:>14}   corral {vs:5.2f}x" + (f" {_bar(vs >= 1.0)} (>= 1.0)" if bar else "")
                  + f"   no-spec {plain:5.2f}x")
    build, ms = compile_cost(gguf, args.rounds)
    failures += ms > 20
    print(f"\nschema compile, 50 properties, first request: {ms:.1f} ms {_bar(ms <= 20)} (<= 20 ms); "
          f"the model's llguidance tokenizer, built once per model: {build:.2f} s")
    return 1 if failures else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--llama-server", help="path of llama.cpp's llama-server built from the same pin")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--tokens", type=int, default=200, help="max tokens per request")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", help="corral model store to use (default: a fresh temporary one)")
    p.add_argument("--corral-only", action="store_true", help="measure corral alone (no ratios)")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
