"""Child-process checks of CPU backend variants: their scores, and a real load-and-decode run of one.

Run as ``python -m corral_plugins._llama.cpucheck --score LIB_DIR`` or
``python -m corral_plugins._llama.cpucheck VARIANT_PATH [--model GGUF]``. They run in a child because a
variant whose instructions the CPU (or its hypervisor) refuses kills its process with SIGILL.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

# Long enough (40+ tokens) that prompt evaluation takes the batched matrix kernels (AMX tiles, sgemm)
# as well as the one-token path the decode steps take: a variant must survive both.
PROMPT = (b"Geography quiz. Answer each question with the name of a city. Germany has its capital in "
          b"Berlin, Italy has its capital in Rome, Spain has its capital in Madrid, and the capital of "
          b"France is")


def variant_files(lib_dir: Path) -> list[Path]:
    """The CPU backend modules in a build folder (``libggml-cpu-<variant>`` or a single ``libggml-cpu``)."""
    found = [p for p in lib_dir.iterdir()
             if p.name.startswith("libggml-cpu") and p.suffix in (".so", ".dylib", ".dll")]
    return sorted(found)


def variant_name(path: Path) -> str:
    stem = path.name.split(".", 1)[0]  # libggml-cpu-zen4
    return stem[len("libggml-cpu-"):] if stem.startswith("libggml-cpu-") else "cpu"


def scores(lib_dir: Path) -> dict[str, int]:
    """Each variant's own ``ggml_backend_score()``: 0 means this CPU lacks an instruction it needs."""
    out: dict[str, int] = {}
    for path in variant_files(lib_dir):
        try:
            handle = ctypes.CDLL(str(path))
            fn = getattr(handle, "ggml_backend_score", None)
            if fn is None:  # a single non-variant build has no score: it runs everywhere it was built for
                out[str(path)] = 1
                continue
            fn.restype = ctypes.c_int
            out[str(path)] = int(fn())
        except OSError as exc:
            print(f"cannot open {path}: {exc}", file=sys.stderr)
            out[str(path)] = 0
    return out


def check(variant: Path, model: Path) -> str:
    """Load only ``variant``, load ``model``, evaluate a prompt and decode three tokens greedily."""
    from corral_plugins._llama import library

    native = library.load(variant.parent, [variant])
    ffi, lib = native.ffi, native.lib
    mparams = lib.llama_model_default_params()
    mparams.n_gpu_layers = 0
    m = lib.llama_model_load_from_file(str(model).encode(), mparams)
    if m == ffi.NULL:
        raise RuntimeError(f"could not load {model}")
    cparams = lib.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_seq_max = 256, 256, 256, 1
    cparams.n_threads = cparams.n_threads_batch = 2
    ctx = lib.llama_init_from_model(m, cparams)
    if ctx == ffi.NULL:
        raise RuntimeError("could not create a context")
    vocab = lib.llama_model_get_vocab(m)
    toks = ffi.new("llama_token[256]")
    n = lib.llama_tokenize(vocab, PROMPT, len(PROMPT), toks, 256, True, False)
    if n <= 0:
        raise RuntimeError(f"tokenize returned {n}")
    out = []
    rc = lib.llama_decode(ctx, lib.llama_batch_get_one(toks, n))
    for _ in range(3):
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        logits = lib.llama_get_logits_ith(ctx, -1)
        n_vocab = lib.llama_vocab_n_tokens(vocab)
        best = max(range(n_vocab), key=lambda i: logits[i])
        out.append(best)
        one = ffi.new("llama_token[1]", [best])
        rc = lib.llama_decode(ctx, lib.llama_batch_get_one(one, 1))
    buf = ffi.new("char[64]")
    text = b"".join(bytes(ffi.buffer(buf, max(0, lib.llama_token_to_piece(vocab, t, buf, 64, 0, False))))
                    for t in out)
    lib.llama_free(ctx)
    lib.llama_model_free(m)
    return f"OK {variant_name(variant)} {out} {text.decode('utf-8', 'replace')!r}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--score", metavar="LIB_DIR", help="print every variant's score as JSON")
    ap.add_argument("variant", nargs="?", help="path of a libggml-cpu-<variant> module to verify")
    ap.add_argument("--model", help="GGUF to run (default: the bundled Gemma 3 270M)")
    args = ap.parse_args(argv)
    if args.score:
        print(json.dumps(scores(Path(args.score))))
        return 0
    if not args.variant:
        ap.error("give a variant path or --score")
    if args.model:
        model = Path(args.model)
    else:
        from corral_plugins._llama.assets import gemma_gguf
        model = gemma_gguf()
    print(check(Path(args.variant).resolve(), model), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
