"""Build the out-of-line API-mode cffi extension that binds llama.cpp's C API (stdlib + cffi only)."""

from __future__ import annotations

import argparse
import sys
import sysconfig
import tempfile
from pathlib import Path

import cffi

STABLE_ABI = not sysconfig.get_config_var("Py_GIL_DISABLED")

# The declarations corral uses (binding.cdef). API mode lets the C compiler check every one of them
# against the pinned llama.h, so partial structs (`...;`) and enums (`...`) take their layout from the
# header: a field added or moved upstream cannot silently shift our view of a struct.
CDEF_FILE = Path(__file__).with_name("binding.cdef")
# C helpers compiled into the module (binding_helpers.c): where doing the work from Python would cost a
# call per element (batch filling) or would need the GIL on a hot path (the abort check).
HELPERS_C = Path(__file__).with_name("binding_helpers.c")
# The RPC worker's device wrapper, C kept in its own file (it is compiled into the same module).
WORKER_C = Path(__file__).with_name("rpc_worker.c")
# llama.cpp's memory breakdown and fit are C++ (common/fit.h, src/llama-ext.h): a C++ file with a C
# interface (memfit.h), compiled and linked into the module with libllama-common-fit (fit.cpp and what it
# calls of libllama-common: cmake/corral-hooks.cmake).
MEMFIT_CPP = Path(__file__).with_name("memfit.cpp")


def make_builder(module_name: str, include_dirs: list[str], lib_dir: str) -> cffi.FFI:
    """The configured FFI builder (exposed so tests can inspect the cdef without compiling)."""
    ffibuilder = cffi.FFI()
    ffibuilder.cdef(CDEF_FILE.read_text())
    extra_link_args = ["-Wl,-rpath,$ORIGIN"] if sys.platform != "darwin" else ["-Wl,-rpath,@loader_path"]
    dirs = [Path(d).resolve() for d in include_dirs]
    # rpc_worker.c needs ggml's internal device interfaces (ggml/src next to ggml/include).
    dirs += [d.parent / "src" for d in dirs if (d.parent / "src" / "ggml-backend-impl.h").is_file()]
    # memfit.cpp needs common/fit.h and src/llama-ext.h beside include/llama.h, and memfit.h here.
    dirs += [d.parent / sub for d in dirs if (d / "llama.h").is_file() for sub in ("common", "src")]
    dirs.append(MEMFIT_CPP.parent)
    ffibuilder.set_source(
        module_name,
        HELPERS_C.read_text() + "\n" + WORKER_C.read_text(),
        sources=[str(MEMFIT_CPP)],
        include_dirs=[str(d) for d in dirs],
        libraries=["mtmd", "llama-common-fit", "llama", "ggml", "ggml-base"],
        library_dirs=[str(Path(lib_dir).resolve())],
        extra_link_args=extra_link_args,
        # Python's stable ABI: one module (``_llama_cpu.abi3.so``) serves every CPython >= 3.10, so a
        # wheel is built once per platform (free-threaded builds have no stable ABI before 3.15).
        py_limited_api=STABLE_ABI,
        define_macros=[("Py_LIMITED_API", "0x030A0000")] if STABLE_ABI else [],
    )
    return ffibuilder


def compile_module(module_name: str, include_dirs: list[str], lib_dir: str, out_dir: str) -> Path:
    """Compile ``module_name`` against the headers in ``include_dirs`` (llama.h, ggml's headers and
    tools/mtmd's mtmd.h), linked to the libmtmd/libllama/libggml in ``lib_dir``, and place the extension
    in ``out_dir``.

    Returns the path of the built extension (e.g. ``out_dir/_llama_cpu.cpython-311-x86_64-linux-gnu.so``).
    The module's rpath is $ORIGIN, so ``out_dir`` should be the folder that holds the libraries.
    """
    for d in include_dirs:
        if not any((Path(d) / h).is_file() for h in ("llama.h", "ggml.h", "mtmd.h", "stb/stb_image.h")):
            raise FileNotFoundError(f"{d} holds none of llama.h, ggml.h, mtmd.h, stb/stb_image.h")
    if not any((Path(d) / "llama.h").is_file() for d in include_dirs):
        raise FileNotFoundError(f"llama.h not found in any of {include_dirs}")
    if not list(Path(lib_dir).glob("libllama.*")):
        raise FileNotFoundError(f"libllama not found in {lib_dir}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    builder = make_builder(module_name, include_dirs, lib_dir)
    # Temporary build files stay out of the source tree and out of the library folder.
    with tempfile.TemporaryDirectory(prefix="corral-ffi-") as tmp:
        built = Path(builder.compile(tmpdir=tmp, verbose=False))
        target = out / built.name
        target.write_bytes(built.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compile corral's cffi binding to llama.cpp.")
    ap.add_argument("--module", required=True, help="module name, e.g. _llama_cpu")
    ap.add_argument("--lib-dir", required=True, help="folder with libllama/libggml/libggml-base")
    ap.add_argument("--include", action="append", required=True,
                    help="header folder (repeat: include, ggml/include, tools/mtmd, vendor)")
    ap.add_argument("--out", required=True, help="folder that receives the extension module")
    args = ap.parse_args(argv)
    path = compile_module(args.module, args.include, args.lib_dir, args.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
