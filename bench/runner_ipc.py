"""Per-token cost of the runner subprocess channel: fake-backend tokens/s in-process vs. over IPC.

Run: ``python bench/runner_ipc.py [--tokens 20000] [--streams 1 4]``. The fake backend produces
tokens as fast as Python can, so the difference between the two rows is the channel's own cost;
a real model's decode step (~20 ms for Gemma 3 270M here) is two to three orders of magnitude more.
``--gemma`` runs the same comparison on Gemma 3 270M with the CPU backend (alternating rounds, so
machine noise hits both sides alike).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from corral.config import Config
from corral.runner import LocalRunner, ProcessRunner, Runner
from corral.spec import ModelFiles, ModelSpec
from corral.testing.tinymodel import write_tiny_gguf
from corral.types import GenerationRequest, LoadOptions, SamplingParams


async def measure(runner: Runner, model: Path, tokens: int, streams: int) -> float:
    await runner.start()
    spec = ModelSpec(name=model.name, display=model.name, digest="", files=ModelFiles(model=str(model)))
    await runner.load(spec, LoadOptions(num_ctx=4096, num_parallel=streams))
    prompt = await runner.tokenize("Once upon a time")
    # sampling with a fixed seed: the same tokens on both sides, and a real model keeps talking
    sampling = SamplingParams(temperature=0.8, seed=1)
    request = GenerationRequest(prompt=prompt, sampling=sampling, num_predict=tokens)

    async def one() -> int:
        return len([e async for e in runner.generate(request) if e.token >= 0])

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(streams)))
    elapsed = time.perf_counter() - t0
    await runner.close()
    return sum(counts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20000, help="tokens per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--gemma", action="store_true", help="Gemma 3 270M on the CPU backend")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (--gemma)")
    args = parser.parse_args()
    if args.gemma:
        gemma(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_gguf(Path(tmp) / "tiny.gguf").path
        script = Path(tmp) / "script.json"
        script.write_text(json.dumps([{"reply": "x" * args.tokens}]))
        os.environ["CORRAL_FAKE_SCRIPT"] = str(script)  # the fake backend's own variable (runners inherit it)
        config = Config(extra_plugins=("corral.testing.fake",), load_plugins=())
        for streams in args.streams:
            local = asyncio.run(measure(LocalRunner(config), Path(model), args.tokens, streams))
            remote = asyncio.run(measure(ProcessRunner(config), Path(model), args.tokens, streams))
            overhead_us = (1 / remote - 1 / local) * 1e6
            print(f"streams={streams}: in-process {local:,.0f} tok/s, subprocess {remote:,.0f} tok/s, "
                  f"channel cost {overhead_us:.1f} us/token")


def gemma(args: argparse.Namespace) -> None:
    from corral.store.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        model = store.ensure_default_model().model_path
        config = Config(models=store.root, backend="cpu")
        for streams in args.streams:
            local, remote = [], []
            for _ in range(args.rounds):
                local.append(asyncio.run(measure(LocalRunner(config), model, args.tokens, streams)))
                remote.append(asyncio.run(measure(ProcessRunner(config), model, args.tokens, streams)))
            best_l, best_r = max(local), max(remote)
            print(f"gemma streams={streams} tokens={args.tokens}: in-process best {best_l:.1f} tok/s, "
                  f"subprocess best {best_r:.1f} tok/s, ratio {best_r / best_l:.3f} "
                  f"(all rounds: {[round(x, 1) for x in local]} vs {[round(x, 1) for x in remote]})")


if __name__ == "__main__":
    main()
