"""Prefill (pp512) and decode (tg128) speed of corral's engine against llama.cpp's llama-bench.

Both run the same model (Gemma 3 270M Q4_K_M), the same llama.cpp build and CPU variant and the same
thread count, in interleaved rounds so that background load hits both alike. Bar (issue #2): corral
reaches at least 0.95x llama-bench for both numbers.

    python bench/decode.py [--rounds 3] [--threads 2] [--llama-bench PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _tools import find_tool, stage_tool  # noqa: E402

BAR = 0.95


def run_llama_bench(exe: Path, model: Path, threads: int) -> dict[str, float]:
    cmd = [str(exe), "-m", str(model), "-p", "512", "-n", "128", "-t", str(threads), "-r", "1", "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=exe.parent)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    out: dict[str, float] = {}
    for row in json.loads(proc.stdout):
        key = "pp512" if row["n_gen"] == 0 else "tg128"
        out[key] = float(row["avg_ts"])
    return out


class Corral:
    """corral's Batcher on one sequence, driven exactly as a client would (events, wall clock)."""

    def __init__(self, lib_dir: Path, variant: Path, model_path: Path, threads: int, sampling: str) -> None:
        from corral.types import LoadOptions
        from corral_plugins._llama import library
        from corral_plugins._llama.batcher import Batcher
        from corral_plugins._llama.model import LlamaModel

        native = library.load(lib_dir, [variant])
        self.model = LlamaModel(native, model_path, LoadOptions())
        opts = LoadOptions(num_ctx=1024, num_parallel=1, num_batch=512, num_thread=threads)
        self.batcher = Batcher(native, self.model, opts)
        n_vocab = self.batcher.n_vocab
        # tg128 must run 128 steps: end-of-generation tokens are banned, as llama-bench never stops.
        self.no_eog = {t: float("-inf") for t in range(n_vocab) if self.model.is_eog(t)}
        self.rng = random.Random(0)
        self.n_vocab = n_vocab
        self.sampling = sampling

    def _prompt(self, n: int) -> list[int]:
        # Random tokens, like llama-bench; a fresh first token each time defeats prefix reuse.
        return [self.rng.randrange(1000, self.n_vocab - 1000) for _ in range(n)]

    def pp512(self) -> float:
        from corral.types import CancelToken, GenerationRequest, SamplingParams

        greedy = SamplingParams(temperature=0)
        req = GenerationRequest(prompt=self._prompt(512), sampling=greedy, num_predict=1)
        t0 = time.perf_counter()
        events = list(self.batcher.submit(req, CancelToken()))
        dt = time.perf_counter() - t0
        assert events[-1].stats is not None and events[-1].stats.cached_tokens == 0
        return 512 / dt

    def tg128(self) -> float:
        from corral.types import CancelToken, GenerationRequest, SamplingParams

        # greedy: what llama-bench's tg measures (no sampler); default: Ollama's sampler chain on top.
        temp = 0.0 if self.sampling == "greedy" else 0.8
        sampling = SamplingParams(temperature=temp, seed=1, logit_bias=self.no_eog)
        req = GenerationRequest(prompt=self._prompt(1), sampling=sampling, num_predict=129)
        it = self.batcher.submit(req, CancelToken())
        next(it)  # the first token comes from the prompt: tg counts the 128 decode steps after it
        t0 = time.perf_counter()
        n = sum(1 for e in it if e.token >= 0)
        dt = time.perf_counter() - t0
        assert n == 128, n
        return n / dt

    def close(self) -> None:
        self.batcher.close()
        self.model.free()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-bench", type=Path, default=None,
                    help="path of llama-bench (default: build_backends.py's tools dir)")
    ap.add_argument("--lib-dir", type=Path, default=ROOT / "plugins" / "cpu" / "_lib")
    ap.add_argument("--sampling", choices=("greedy", "default"), default="greedy",
                    help="corral's tg128 sampler: greedy argmax, or Ollama's default chain (top_k 40 ...)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    from corral_plugins._llama.assets import gemma_gguf
    from corral_plugins._llama.cpuvariant import choose_variant

    bench = find_tool("llama-bench", args.llama_bench)
    model = gemma_gguf()
    choice = choose_variant(args.lib_dir, model=model)
    print(f"model {model.name}, cpu variant {choice.name}, threads {args.threads}, rounds {args.rounds}, "
          f"corral sampling {args.sampling}")
    corral = Corral(args.lib_dir, choice.path, model, args.threads, args.sampling)
    corral.pp512()  # warm-up: first-use allocations, page cache
    res: dict[str, dict[str, list[float]]] = {"llama-bench": {"pp512": [], "tg128": []},
                                              "corral": {"pp512": [], "tg128": []}}
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        exe = stage_tool(bench, Path(tmp), args.lib_dir, choice.path)
        for r in range(args.rounds):
            lb = run_llama_bench(exe, model, args.threads)
            c = {"pp512": corral.pp512(), "tg128": corral.tg128()}
            for k in ("pp512", "tg128"):
                res["llama-bench"][k].append(lb[k])
                res["corral"][k].append(c[k])
            print(f"round {r + 1}: llama-bench pp512 {lb['pp512']:.1f} tg128 {lb['tg128']:.1f} | "
                  f"corral pp512 {c['pp512']:.1f} tg128 {c['tg128']:.1f} tok/s")
    corral.close()
    summary = {}
    ok = True
    for k in ("pp512", "tg128"):
        lb, co = statistics.median(res["llama-bench"][k]), statistics.median(res["corral"][k])
        ratio = co / lb
        ok &= ratio >= BAR
        summary[k] = {"llama_bench": lb, "corral": co, "ratio": ratio}
        print(f"{k}: llama-bench {lb:.1f} tok/s, corral {co:.1f} tok/s, ratio {ratio:.3f} "
              f"({'ok' if ratio >= BAR else 'BELOW'} the {BAR}x bar)")
    if args.json:
        args.json.write_text(json.dumps({"rounds": res, "median": summary}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
