"""Prefill and decode speed of Gemma 3 270M split over two loopback `corral worker`s: corral against
`llama-server --rpc` with the same two workers, and the cost of the split against the local CPU backend.

Three sides, each asked the same way (greedy, raw prompts, one request at a time, fresh text every time
so no prompt cache helps):
  corral rpc    `corral serve --workers W1,W2` (the rpc backend: every layer on the workers)
  llama rpc     `llama-server --rpc W1,W2 -ngl 99` from the same build (`build_backends.py --tools`),
                staged on corral's CPU variant
  corral cpu    `corral serve --backend cpu`, the model on this host alone
prefill = tokens/s of a ~PROMPT-token prompt, decode = tokens/s of a TOKENS-token answer, as each server
times its own work (corral's /api/generate prompt_eval/eval durations, llama-server's /completion
timings); the "client" rows time the same from outside over /v1/completions (wall time of a 1-token
completion; first to last streamed token). The workers serve one client at a time, so the rpc sides
take turns: each round loads corral's runner, measures, unloads it, then starts llama-server, measures,
stops it. Bar (issue #15): corral rpc >= 0.95x llama rpc for prefill and decode.

    python bench/rpc.py [--rounds 3] [--tokens 128] [--prompt 512] [--threads 2] [--worker-threads 1]
                        [--llama-server PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from serve import _free_port, _prepare_model, _wait_ready, filler  # noqa: E402

BAR = 0.95
MODEL = "gemma3:270m"


class Side:
    """One server under test: its URL, the model name to ask for, whether it is llama-server."""

    def __init__(self, name: str, url: str, model: str, llama: bool = False) -> None:
        self.name, self.url, self.model, self.llama = name, url, model, llama
        # tokens/s per round: what the server itself timed, and what a streaming client saw
        self.rates: dict[str, list[float]] = {k: [] for k in ("prefill", "decode", "client prefill",
                                                               "client decode")}

    def complete(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        """A greedy raw completion; returns (prompt tokens/s, generated tokens/s) as the server timed them."""
        if self.llama:
            body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0, "cache_prompt": False}
            t = self._post("/completion", body)["timings"]
            return {"prefill": t["prompt_per_second"], "decode": t["predicted_per_second"],
                    "n": t["predicted_n"]}
        body = {"model": self.model, "prompt": prompt, "raw": True, "stream": False,
                "options": {"temperature": 0, "num_predict": max_tokens}}
        r = self._post("/api/generate", body)
        # A 1-token answer has no decode time of its own (Ollama leaves eval_duration out then).
        decode = r.get("eval_count", 0) / max(r.get("eval_duration", 0) / 1e9, 1e-9)
        return {"prefill": r["prompt_eval_count"] / (r["prompt_eval_duration"] / 1e9), "decode": decode,
                "n": r.get("eval_count", 0)}

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(self.url + path, json=body, timeout=600)
        r.raise_for_status()
        return r.json()

    def measure(self, tag: str, prompt_words: int, tokens: int) -> None:
        """Prefill of a fresh ~``prompt_words``-token prompt, then decode of ``tokens`` tokens: as the
        server timed them, and as a client streaming /v1/completions sees them."""
        long = f"[{tag}] " + filler(prompt_words) + " Summarise."
        self.rates["prefill"].append(self.complete(long + " A", 1)["prefill"])
        story = f"[{tag}] Write a long story about a lighthouse keeper."
        timed = self.complete(story, tokens)
        if timed["n"] < tokens // 2:
            raise SystemExit(f"{self.name}: the story ended after {timed['n']} tokens")
        self.rates["decode"].append(timed["decode"])
        body = {"model": self.model, "max_tokens": 1, "temperature": 0, "prompt": long + " B"}
        if self.llama:
            body["cache_prompt"] = False
        t0 = time.perf_counter()
        usage = self._post("/v1/completions", body)["usage"]
        self.rates["client prefill"].append(usage["prompt_tokens"] / (time.perf_counter() - t0))
        arrivals = []
        body = {**body, "prompt": story + " Again.", "max_tokens": tokens, "stream": True}
        with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {") and any(c.get("text") for c in json.loads(line[6:])["choices"]):
                    arrivals.append(time.perf_counter())
        if len(arrivals) < 8:
            raise SystemExit(f"{self.name}: only {len(arrivals)} tokens streamed")
        self.rates["client decode"].append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def corral_server(work: Path, name: str, models: Path, threads: int,
                  *args: str) -> tuple[subprocess.Popen[bytes], Side]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_HOST": f"127.0.0.1:{port}", "CORRAL_MODELS": str(models),
                "CORRAL_HOME": str(work / name), "CORRAL_NUM_PARALLEL": "1", "CORRAL_CONTEXT_LENGTH": "2048",
                "CORRAL_KEEP_ALIVE": "-1"})
    proc = start([sys.executable, "-m", "corral.cli", "serve", *args], env, work / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, "/api/version", proc)
    # corral's thread count is a model parameter (num_thread): a derived model carries it.
    httpx.post(url + "/api/create", timeout=120, json={
        "model": "bench-gemma", "from": MODEL, "parameters": {"num_thread": threads}, "stream": False,
    }).raise_for_status()
    return proc, Side(name, url, "bench-gemma")


def unload(side: Side) -> None:
    """Free the workers: corral's runner holds its connections while the model is loaded."""
    httpx.post(side.url + "/api/generate", json={"model": side.model, "keep_alive": 0}, timeout=120)
    time.sleep(0.5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128, help="tokens decoded per round")
    p.add_argument("--prompt", type=int, default=512, help="words of the prefill prompt (~as many tokens)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads of the local side")
    p.add_argument("--worker-threads", type=int, default=1, help="threads of each worker")
    p.add_argument("--llama-server", help="llama-server of the same pin (default: build_backends.py --tools)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="corral-bench-rpc-"))
    models = work / "models"
    gguf = _prepare_model(models)
    llama = stage_tool(find_tool("llama-server", args.llama_server), work / "llama-server")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        endpoints = []
        for i in range(2):
            port = _free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
            env["CORRAL_HOME"] = str(work / f"worker{i}")
            procs.append(start([sys.executable, "-m", "corral.cli", "worker", "--port", str(port),
                                "--threads", str(args.worker_threads)], env, work / f"worker{i}.log"))
            endpoints.append(f"127.0.0.1:{port}")
        rpc_proc, rpc = corral_server(work, "corral-rpc", models, args.threads, "--workers",
                                      ",".join(endpoints))
        procs.append(rpc_proc)
        cpu_proc, cpu = corral_server(work, "corral-cpu", models, args.threads, "--backend", "cpu")
        procs.append(cpu_proc)
        llama_rpc = Side("llama-rpc", "", MODEL, llama=True)
        print(f"{MODEL}: 2 workers x {args.worker_threads} thread(s) on loopback; local sides {args.threads} "
              f"thread(s); prompt ~{args.prompt} words, {args.tokens} tokens; logs in {work}")
        for r in range(args.rounds):
            tag = f"{time.time_ns()}-{r}"
            rpc.complete("Warm up.", 2)  # loads the split model (outside the timing)
            rpc.measure(tag + "-c", args.prompt, args.tokens)
            unload(rpc)
            port = _free_port()
            server = start([str(llama), "-m", str(gguf), "--rpc", ",".join(endpoints), "-ngl", "99",
                            "-np", "1", "-c", "2048", "-t", str(args.threads), "--host", "127.0.0.1",
                            "--port", str(port)], dict(os.environ), work / "llama-server.log")
            try:
                llama_rpc.url = f"http://127.0.0.1:{port}"
                _wait_ready(llama_rpc.url, "/health", server)
                llama_rpc.complete("Warm up.", 2)
                llama_rpc.measure(tag + "-l", args.prompt, args.tokens)
            finally:
                stop(server)
            time.sleep(0.5)  # the workers take their next client
            cpu.complete("Warm up.", 2)
            cpu.measure(tag + "-p", args.prompt, args.tokens)
            sides = (rpc, llama_rpc, cpu)
            print(f"round {r + 1}: " + "; ".join(
                f"{s.name} prefill {s.rates['prefill'][-1]:.0f} decode {s.rates['decode'][-1]:.1f} t/s"
                for s in sides), flush=True)
    finally:
        for proc in reversed(procs):
            stop(proc)
        # The model store and the staged llama-server are half a gigabyte; the logs stay.
        for heavy in (models, work / "llama-server"):
            shutil.rmtree(heavy, ignore_errors=True)

    sides = (rpc, llama_rpc, cpu)
    med = {s.name: {k: statistics.median(v) for k, v in s.rates.items()} for s in sides}
    print(f"\nmedians of {args.rounds} rounds (tokens/s); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs at the end")
    print(f"{'':16}{'corral rpc':>12}{'llama rpc':>12}{'ratio':>8}{'':8}{'corral cpu':>12}{'rpc/cpu':>9}")
    failures = 0
    for key in ("prefill", "decode", "client prefill", "client decode"):
        ratio = med["corral-rpc"][key] / med["llama-rpc"][key]
        cost = med["corral-rpc"][key] / med["corral-cpu"][key]
        barred = not key.startswith("client")
        ok = ratio >= BAR
        failures += barred and not ok
        verdict = ("PASS" if ok else "FAIL") if barred else ""
        print(f"{key:16}{med['corral-rpc'][key]:>12.1f}{med['llama-rpc'][key]:>12.1f}{ratio:>7.2f}x"
              f" {verdict:<7}{med['corral-cpu'][key]:>12.1f}{cost:>8.2f}x")
    print(f"bar: corral rpc >= {BAR}x llama-server --rpc, both as the server timed its own work (the\n"
          "client rows add HTTP, and corral's hop from its runner process, on a machine others load too);\n"
          "rpc/cpu is what splitting the model over loopback workers costs against the CPU backend alone")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": med, "rounds": {s.name: s.rates for s in sides}},
                                              indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
