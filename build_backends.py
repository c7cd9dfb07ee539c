#!/usr/bin/env python3
"""Build the pinned llama.cpp once per accelerator into plugins/<backend>/_lib (cached, standalone script).

Each backend is a shared-library build with runtime backend loading, so one folder holds everything a
backend plugin needs and nothing depends on the machine that built it:

| backend | CMake flags on top of the common ones                     | built by "auto" when            |
|---------|-----------------------------------------------------------|---------------------------------|
| cpu     | the CPU variants below (one chosen and verified at run    | always                          |
|         | time by the plugin)                                       |                                 |
| cuda    | GGML_CUDA=ON, CMAKE_CUDA_ARCHITECTURES (--cuda-arch)      | CUDA toolkit + NVIDIA driver    |
| metal   | GGML_METAL=ON, GGML_METAL_EMBED_LIBRARY=ON                | macOS on Apple Silicon          |
| vulkan  | GGML_VULKAN=ON                                            | only when asked, SDK found      |

"auto" builds cuda only where it can run (a toolkit alone, as on a GPU-less CI box, would cost an hour
of nvcc for nothing); `--backend cuda` builds it wherever the toolkit is.

Common: Release, BUILD_SHARED_LIBS=ON, GGML_BACKEND_DL=ON, GGML_NATIVE=OFF (portable: never -march=native,
which dies on CPUs that advertise instructions their hypervisor forbids), GGML_RPC=ON (remote devices),
libmtmd (images and audio), rpath $ORIGIN, no curl/openssl, no web UI download, ccache or sccache when
one is on PATH. The build tree also configures llama.cpp's tools, so `--tools` adds llama-bench and
llama-server (for the benchmarks) without a second full build.

CPU variants (x86-64), CORRAL_CPU_VARIANTS:
- unset or "native": the variant this CPU will choose at run time (plugins/_llama/cpufeatures.py scores
  them as ggml does), the best one without AMX when that one uses AMX, and the portable baseline `x64`;
- "all": every variant ggml knows (GGML_CPU_ALL_VARIANTS), for a wheel that runs on any x86-64 CPU;
- a comma list of names (`haswell,x64`).
Every backend tree is configured with all of ggml's variants (GGML_CPU_ALL_VARIANTS), and builds only
the `ggml-cpu-<variant>` targets asked for (cmake/corral-hooks.cmake keeps libggml from depending on all
of them): ggml-base and the rest are compiled once, and an "all" build after a default one compiles only
the missing variants. Other architectures build ggml's variant list.

Outputs per backend: the SONAME-named libraries, the backend modules, the cffi extension module
`_llama_<backend>` compiled against the pinned llama.h by plugins/_llama/ffi_build.py, and build-info.json.
Builds are cached outside the source tree (CORRAL_BUILD_CACHE, default ~/.cache/corral/build) under a key of
everything that changes the output; an unchanged rebuild only checks the key and finishes in seconds.

CORRAL_BACKENDS (honoured by `pip install`): "auto" (default), "none" to skip, or a comma list.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent
VENDOR = ROOT / "vendor" / "llama.cpp"
PIN = json.loads((VENDOR / "corral-pin.json").read_text())
FFI_BUILD = ROOT / "plugins" / "_llama" / "ffi_build.py"
CPU_FEATURES = ROOT / "plugins" / "_llama" / "cpufeatures.py"
# CMAKE_PROJECT_INCLUDE: unity batches for mtmd's models, libllama-common-fit, CPU variants on demand
CMAKE_HOOKS = ROOT / "cmake" / "corral-hooks.cmake"
RECIPE_VERSION = 2  # bump when the way the libraries are compiled changes (rebuilds everything)
LAYOUT_VERSION = 5  # bump when the way a backend folder is assembled changes (re-copies only)
KNOWN_BACKENDS = ("cpu", "cuda", "metal", "vulkan")
# llama-common-fit (cmake/corral-hooks.cmake): llama.cpp's fit from libllama-common, which memfit.cpp calls,
# without the rest of that library (chat, argument parsing, downloads, cpp-httplib): only the tools need it
LIBRARY_TARGETS = ("llama", "llama-common-fit", "mtmd")
# plus every libggml-<backend> module
SHIPPED_STEMS = ("libllama", "libllama-common-fit", "libmtmd", "libggml", "libggml-base")
TOOL_TARGETS = ("llama-bench", "llama-server")


class BuildError(Exception):
    """A build that cannot proceed; the message is one line saying what is missing and what to do."""


def log(msg: str) -> None:
    print(f"build_backends: {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("CORRAL_BUILD_CACHE", "~/.cache/corral/build")).expanduser()


def run(cmd: list[str], *, cwd: Path | None = None, quiet: bool = False, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    if not quiet and proc.stdout.strip():
        print(proc.stdout, file=sys.stderr)
    return proc.stdout


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock shared by every build on this machine that uses the same cache: two installs
    at once (two checkouts, or an install beside a prefetch) wait for each other instead of writing
    into the same tree."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; builds there are one at a time anyway
        yield
        return
    path = cache_root() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build that holds {path.name}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- tools ------------------------------------------------------------------------------------------
def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise BuildError(f"{name} not found: {hint}")
    return path


def compiler_ids() -> list[str]:
    ids = []
    for var, default in (("CC", "cc"), ("CXX", "c++")):
        exe = shutil.which(os.environ.get(var, default))
        if not exe:
            raise BuildError(f"no C/C++ compiler ({default}) found: install one, e.g. "
                             "`apt install build-essential` or Xcode's command line tools")
        first = run([exe, "--version"], quiet=True).splitlines()[0]
        ids.append(f"{var}={first}")
    return ids


def nvcc_path() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"),
                 *(str(Path(p) / "bin" / "nvcc") for p in (os.environ.get("CUDA_HOME"),
                                                          os.environ.get("CUDA_PATH"), "/usr/local/cuda")
                   if p)):
        if cand and Path(cand).is_file():
            return cand
    return None


def nvidia_driver_present() -> bool:
    if Path("/proc/driver/nvidia").exists():
        return True
    return sys.platform == "win32" and bool(shutil.which("nvidia-smi"))


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def vulkan_found() -> tuple[bool, str]:
    if not shutil.which("glslc"):
        return False, "glslc not found (install the Vulkan SDK or `apt install glslc libvulkan-dev`)"
    return True, "glslc found"


def backend_plan(requested: list[str] | None) -> list[tuple[str, bool, str]]:
    """(backend, will_build, why) for every known backend."""
    plan = []
    want = set(requested or [])
    auto = not requested or "auto" in want
    for name in KNOWN_BACKENDS:
        if name == "cpu":
            ok, why = True, "always built"
        elif name == "cuda":
            nvcc = nvcc_path()
            ok, why = (bool(nvcc), f"CUDA toolkit at {nvcc}" if nvcc else
                       "no CUDA toolkit (nvcc not on PATH, CUDA_HOME unset)")
            if ok and name not in want and not nvidia_driver_present():
                ok, why = False, why + ", but no NVIDIA driver: build it with --backend cuda"
        elif name == "metal":
            ok, why = is_apple_silicon(), ("Apple Silicon" if is_apple_silicon() else "not macOS on arm64")
        else:
            found, why = vulkan_found()
            ok = found and name in want
            if found and name not in want:
                why += "; only built when asked for (--backend vulkan)"
        if not auto and name not in want:
            ok, why = False, "not requested"
        elif name in want and not ok and not why.startswith("not requested"):
            raise BuildError(f"cannot build {name}: {why}")
        plan.append((name, ok, why))
    return plan


# ---- source -----------------------------------------------------------------------------------------
def source_ready() -> bool:
    stamp = VENDOR / ".corral-source.json"
    return (stamp.exists() and json.loads(stamp.read_text()).get("sha256") == PIN["source"]["sha256"]
            and (VENDOR / "CMakeLists.txt").exists())


def ensure_source() -> Path:
    """Make vendor/llama.cpp hold the pinned tree; return its path."""
    if source_ready():
        return VENDOR
    with locked("source-" + hashlib.sha256(str(VENDOR).encode()).hexdigest()[:12]):
        if source_ready():  # a prefetch finished it while we waited
            return VENDOR
        return _extract_source()


def _extract_source() -> Path:
    src = PIN["source"]
    stamp = VENDOR / ".corral-source.json"
    if (VENDOR / ".git").is_dir():
        head = run(["git", "-C", str(VENDOR), "rev-parse", "HEAD"], quiet=True).strip()
        if not head.startswith(PIN["commit"]):
            raise BuildError(f"vendor/llama.cpp is a git checkout at {head[:12]}, not the pinned "
                             f"{PIN['commit']}: run `git -C vendor/llama.cpp checkout {PIN['commit']}`")
        return VENDOR
    archive = fetch_sdist()
    log(f"extracting {src['subdir']} from {archive.name}")
    for child in VENDOR.iterdir():  # keep only the two committed corral files
        if child.name in ("corral-pin.json", "CORRAL-README.md"):
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    prefix = src["subdir"].rstrip("/") + "/"
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.name.startswith(prefix) or member.name == prefix.rstrip("/"):
                continue
            rel = Path(member.name[len(prefix):])
            if rel.is_absolute() or ".." in rel.parts or not (member.isfile() or member.isdir()):
                continue  # no links, devices or escapes from the tree
            if rel.parts[0] == ".git":
                continue  # the sdist's submodule pointer, not a checkout
            target = VENDOR / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as fin, open(target, "wb") as fout:  # type: ignore[union-attr]
                shutil.copyfileobj(fin, fout)
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
    stamp.write_text(json.dumps({"archive": src["filename"], "sha256": src["sha256"],
                                 "commit": PIN["commit"]}, indent=2))
    return VENDOR


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_sdist() -> Path:
    """The pinned source distribution from PyPI, verified, cached; never trusted unverified.

    It comes through `pip download`, so the user's pip configuration (index, mirrors, proxy,
    certificates) applies exactly as it did to the install that runs this script. Only this one
    package is taken from source: pip prepares its metadata in an isolated environment, and
    `--no-binary :all:` would make that environment build scikit-build-core and its own build
    requirements from source too (98 s instead of 11 s on a 2-core machine).
    """
    src = PIN["source"]
    dest = cache_root() / "sdist" / src["filename"]
    with locked("sdist"):
        if dest.exists() and sha256_file(dest) == src["sha256"]:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        return _download_sdist(dest)


def _download_sdist(dest: Path) -> Path:
    src = PIN["source"]
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        log(f"downloading {src['filename']} with pip")
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", src["package"],
             f"{src['package']}=={src['version']}", "-d", tmp], quiet=True, env=pip_env())
        got = Path(tmp) / src["filename"]
        if not got.exists():
            raise BuildError(f"pip download did not produce {src['filename']}: is the package index "
                             "reachable (pip's own configuration is used)?")
        digest = sha256_file(got)
        if digest != src["sha256"]:
            raise BuildError(f"{src['filename']} has sha256 {digest}, expected {src['sha256']}: "
                             "refusing to build from an unverified source")
        os.replace(got, dest)
    return dest


def pip_env() -> dict[str, str]:
    """The environment for a child `python -m pip`: inside `pip install`, this script runs in pip's
    isolated build environment, whose PYTHONPATH hides the interpreter's own site-packages (and with
    them pip itself); the child gets the interpreter's normal view back."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONNOUSERSITE", "PIP_BUILD_TRACKER", "PIP_REQ_TRACKER"):
        env.pop(var, None)
    return env


# ---- configure / build --------------------------------------------------------------------------------
def cpu_features() -> ModuleType:
    """plugins/_llama/cpufeatures.py, loaded by path: this script runs before the package is installed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_corral_cpufeatures", CPU_FEATURES)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_variants() -> list[str] | None:
    """The x86 CPU variants to build, best first; None means ggml's whole list."""
    feats = cpu_features()
    choice = os.environ.get("CORRAL_CPU_VARIANTS", "native").strip().lower()
    if not feats.is_x86() or sys.platform == "darwin" or choice == "all":
        return None
    if choice in ("", "native"):
        return list(feats.build_choice(feats.cpu_flags()))
    names = [n.strip() for n in choice.split(",") if n.strip()]
    unknown = [n for n in names if n not in feats.X86_VARIANTS]
    if unknown:
        raise BuildError(f"CORRAL_CPU_VARIANTS names unknown variant(s) {', '.join(unknown)}; known: "
                         f"native, all, {', '.join(feats.X86_VARIANTS)}")
    return names


def cpu_targets(variants: list[str] | None) -> tuple[str, ...]:
    """The CMake targets that build ``variants``' CPU modules (None: every variant ggml configures)."""
    if variants is None:
        return ("corral-cpu-variants",)  # cmake/corral-hooks.cmake: depends on every ggml-cpu-* module
    return tuple(f"ggml-cpu-{v}" for v in variants)


def cmake_args(backend: str, cuda_arch: str | None) -> list[str]:
    rpath = "@loader_path" if sys.platform == "darwin" else "$ORIGIN"
    args = [
        "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_BACKEND_DL=ON", "-DGGML_NATIVE=OFF",
        f"-DCMAKE_INSTALL_RPATH={rpath}", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DGGML_RPC=ON",
        # tools are configured (built only with --tools); nothing may be fetched from the network
        "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
    ]
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64") and not is_apple_silicon():
        # every variant configured, only the asked-for ones built (cpu_targets, corral-hooks.cmake)
        args += ["-DGGML_CPU_ALL_VARIANTS=ON", "-DCORRAL_CPU_VARIANTS_ON_DEMAND=ON"]
    if backend == "cuda":
        args += ["-DGGML_CUDA=ON", "-DGGML_CUDA_NCCL=OFF", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}"]
        nvcc = nvcc_path()
        if nvcc:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    elif backend == "metal":
        args += ["-DGGML_METAL=ON", "-DGGML_METAL_EMBED_LIBRARY=ON"]
    elif backend == "vulkan":
        args += ["-DGGML_VULKAN=ON"]
    else:
        args += ["-DGGML_METAL=OFF"] if sys.platform == "darwin" else []
    return args


def compiler_cache_args() -> list[str]:
    """ccache/sccache speed up rebuilds (a pin bump recompiles only what changed) without changing the
    output, so they stay out of the build key."""
    return ["-DGGML_CCACHE=ON" if shutil.which("ccache") or shutil.which("sccache") else "-DGGML_CCACHE=OFF"]


def default_cuda_arch() -> str:
    """The visible GPUs' architectures, else a list covering recent data-centre and desktop cards."""
    env = os.environ.get("CORRAL_CUDA_ARCHITECTURES")
    if env:
        return env
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], quiet=True)
            caps = sorted({c.strip().replace(".", "") for c in out.splitlines() if c.strip()})
            if caps:
                return ";".join(caps)
        except BuildError:
            pass
    return "75-virtual;80;86;89;90"


def build_key(backend: str, args: list[str]) -> str:
    cmake_version = run([require_tool("cmake", "install it with `pip install cmake` or `apt install cmake`"),
                         "--version"], quiet=True).splitlines()[0]
    facts = {"pin": PIN, "backend": backend, "args": args, "compilers": compiler_ids(),
             "cmake": cmake_version, "machine": platform.machine(), "system": platform.system(),
             "recipe": RECIPE_VERSION,
             "hooks": {p.name: sha256_file(p) for p in sorted(CMAKE_HOOKS.parent.iterdir())}}
    if backend == "cuda":
        facts["nvcc"] = run([nvcc_path() or "nvcc", "--version"], quiet=True).strip().splitlines()[-1]
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


class Tree:
    """One CMake build tree in the cache and the targets it must have built."""

    def __init__(self, backend: str, args: list[str], key: str, targets: tuple[str, ...],
                 name: str | None = None) -> None:
        self.backend, self.args, self.key, self.targets = backend, args, key, targets
        self.name = name or backend
        self.dir = cache_root() / f"{self.name}-{key}"

    @property
    def bin_dir(self) -> Path:
        return self.dir / "bin"

    def built(self) -> set[str]:
        stamp = self.dir / "corral-targets.json"
        return set(json.loads(stamp.read_text())) if stamp.exists() else set()

    def mark_built(self) -> None:
        (self.dir / "corral-targets.json").write_text(json.dumps(sorted(self.built() | set(self.targets))))


def configure_command(tree: Tree, force: bool) -> list[str] | None:
    """The cmake command that configures ``tree``, or None when it is configured already."""
    if force and tree.dir.exists():
        shutil.rmtree(tree.dir)
    if (tree.dir / "CMakeCache.txt").exists():
        return None
    cmake = require_tool("cmake", "install it with `pip install cmake` or `apt install cmake`")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    return [cmake, "-S", str(ensure_source()), "-B", str(tree.dir), *gen, *tree.args, *compiler_cache_args(),
            f"-DCMAKE_PROJECT_INCLUDE={CMAKE_HOOKS}"]


def run_side_by_side(cmds: list[list[str]]) -> list[str]:
    """Run ``cmds`` at once; the failures, each with the tail of its output (an empty list: all ran)."""
    procs = []
    failed = []
    try:
        for cmd in cmds:
            out = tempfile.TemporaryFile(mode="w+")
            procs.append((cmd, out, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)))
        for cmd, out, proc in procs:
            if proc.wait() != 0:
                out.seek(0)
                tail = "\n".join(out.read().splitlines()[-40:])
                failed.append(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    finally:
        for _cmd, out, proc in procs:
            if proc.poll() is None:  # an interrupt: leave no compiler running
                proc.terminate()
                proc.wait()
            out.close()
    return failed


def build_trees(trees: list[Tree], jobs: int, force: bool) -> None:
    """Configure and build every tree that lacks its targets; the trees build side by side."""
    todo = [t for t in trees if force or not set(t.targets) <= t.built()]
    if not todo:
        return
    with contextlib.ExitStack() as stack:
        for tree in sorted(todo, key=lambda t: t.dir.name):  # one order everywhere: no deadlock
            stack.enter_context(locked(tree.dir.name))
        # another install may have built them while we waited
        todo = [t for t in todo if force or not set(t.targets) <= t.built()]
        if not todo:
            return
        configures = [c for c in (configure_command(t, force) for t in todo) if c]
        if configures:
            log(f"configuring {', '.join(t.name for t in todo)} in {cache_root()}")
            failed = run_side_by_side(configures)
            if failed:
                for tree in todo:  # a half-written CMakeCache.txt must not pass for a configured tree
                    if not tree.built():
                        shutil.rmtree(tree.dir, ignore_errors=True)
                raise BuildError("\n".join(failed))
        cmake = require_tool("cmake", "install it with `pip install cmake` or `apt install cmake`")
        what = ", ".join(f"{t.name} ({' '.join(t.targets)})" for t in todo)
        log(f"building {what} with -j{jobs}; this takes minutes on a small machine")
        started = time.monotonic()
        failed = run_side_by_side([[cmake, "--build", str(t.dir), "-j", str(jobs), "--target", *t.targets]
                                   for t in todo])
        if failed:
            raise BuildError("\n".join(failed))
        for tree in todo:
            tree.mark_built()
        log(f"built {', '.join(t.name for t in todo)} in {time.monotonic() - started:.0f}s")


def shipped_libraries(bin_dir: Path, variants: list[str] | None = None) -> list[Path]:
    """Files a backend folder needs: SONAME-named shared libraries and the backend modules, of the CPU
    modules only ``variants``' (None: every one built).

    Wheels cannot hold symlinks, so each library is shipped once, under the name the loader asks for.
    """
    out = []
    for path in sorted(bin_dir.iterdir()):
        name = path.name
        stem = name.split(".")[0]
        # the runtime's libraries only: a --tools build leaves the tools' own libraries in the same
        # folder, which no plugin loads; the tree may hold CPU variants an earlier build asked for
        if stem not in SHIPPED_STEMS and not name.startswith("libggml-"):
            continue
        if variants is not None and stem.startswith("libggml-cpu-") and stem[12:] not in variants:
            continue  # libggml-cpu-<variant>
        if sys.platform == "darwin":
            keep = name.endswith(".dylib") and (name.count(".") == 2 or not path.is_symlink())
        else:
            parts = name.split(".so")
            soname = len(parts) == 2 and parts[1].count(".") == 1  # libllama.so.0
            module = name.endswith(".so") and name.startswith("libggml-") and not path.is_symlink()
            keep = name.startswith("lib") and (soname or module)
        if keep and path.is_file():
            out.append(path)
    return out


def install_backend(backend: str, bin_dir: Path, key: str, out_dir: Path, py_key: str,
                    variants: list[str] | None = None) -> None:
    """Copy the libraries (of the CPU modules, ``variants``') and compile the cffi module into out_dir,
    unless it already matches."""
    info_path = out_dir / "build-info.json"
    want = {"key": key, "python": py_key, "layout": LAYOUT_VERSION, "variants": variants or "all"}
    if info_path.exists():
        have = json.loads(info_path.read_text())
        if {k: have.get(k) for k in want} == want:
            return
    staging = out_dir.with_name(out_dir.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    names = []
    for lib in shipped_libraries(bin_dir, variants):
        shutil.copy2(lib, staging / lib.name, follow_symlinks=True)
        names.append(lib.name)
    include_dirs = [str(VENDOR / "include"), str(VENDOR / "ggml" / "include"), str(VENDOR / "tools" / "mtmd"),
                    str(VENDOR / "vendor")]
    module = compile_ffi(backend, include_dirs, bin_dir, staging, py_key)
    info = {**want, "backend": backend, "pin": PIN["commit"], "module": module.name,
            "libraries": sorted(names),
            "cpu_variants": sorted(n for n in names if n.startswith("libggml-cpu"))}
    (staging / "build-info.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(staging, out_dir)
    log(f"{backend}: {len(names)} libraries + {module.name} in {out_dir.relative_to(ROOT)}")


def python_key() -> str:
    """What the cffi module depends on besides the libraries: it is built for Python's stable ABI
    (one module for every CPython >= 3.10), so its sources (ffi_build.py, the declarations in
    binding.cdef and the C and C++ it compiles in) and the cffi that generated it."""
    ffi_hash = "none"
    if FFI_BUILD.exists():
        compiled = (p for ext in ("cdef", "c", "cpp", "h") for p in FFI_BUILD.parent.glob(f"*.{ext}"))
        sources = [FFI_BUILD, *sorted(compiled)]
        ffi_hash = hashlib.sha256("".join(sha256_file(p) for p in sources).encode()).hexdigest()[:12]
    try:
        cffi_version = importlib.metadata.version("cffi")
    except importlib.metadata.PackageNotFoundError:
        cffi_version = "none"
    abi = "abi3" if not sysconfig.get_config_var("Py_GIL_DISABLED") else sysconfig.get_config_var("SOABI")
    return f"{abi}-cffi{cffi_version}-{ffi_hash}"


def compile_ffi(backend: str, include_dirs: list[str], lib_dir: Path, out_dir: Path, py_key: str) -> Path:
    """Compile plugins/_llama/ffi_build.py's module in a child process (cached by python_key)."""
    if not FFI_BUILD.exists():
        raise BuildError(f"{FFI_BUILD.relative_to(ROOT)} is missing")
    lib_tag = hashlib.sha256(str(lib_dir).encode()).hexdigest()[:8]
    cached = cache_root() / "ffi" / f"{backend}-{py_key}-{lib_tag}"
    with locked(f"ffi-{cached.name}"):
        if not any(cached.glob(f"_llama_{backend}*")):
            ensure_source()  # a fresh clone has only the pin: the headers come from the verified tree
            shutil.rmtree(cached, ignore_errors=True)
            cached.mkdir(parents=True)
            run([sys.executable, str(FFI_BUILD), "--module", f"_llama_{backend}", "--lib-dir", str(lib_dir),
                 "--out", str(cached), *[a for inc in include_dirs for a in ("--include", inc)]], quiet=True)
    built = [p for p in cached.glob(f"_llama_{backend}*") if p.suffix in (".so", ".pyd", ".dylib")]
    if not built:
        raise BuildError(f"the cffi module _llama_{backend} was not produced in {cached}")
    shutil.copy2(built[0], out_dir / built[0].name)
    return built[0]


# ---- command line -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", nargs="+", metavar="NAME",
                        help="backends to build: auto (default) or names from " + ", ".join(KNOWN_BACKENDS))
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    parser.add_argument("--list", action="store_true", help="show what would be built and why")
    parser.add_argument("--tools", action="store_true", help="also build llama-bench and llama-server (cpu)")
    parser.add_argument("--print-tools-dir", action="store_true", help="print where the tools are and exit")
    parser.add_argument("--cuda-arch", default=None, help="CMAKE_CUDA_ARCHITECTURES for cuda (e.g. 90)")
    parser.add_argument("--from-install", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefetch-source", action="store_true",
                        help="only fetch, verify and extract the pinned llama.cpp source, then exit")
    opts = parser.parse_args(argv)
    if opts.prefetch_source:
        ensure_source()
        return 0

    requested = opts.backend
    if requested is None and os.environ.get("CORRAL_BACKENDS"):
        requested = [b.strip() for b in os.environ["CORRAL_BACKENDS"].split(",") if b.strip()]
    if requested and set(requested) & {"none", "skip"}:
        log("CORRAL_BACKENDS=none: not building any backend")
        return 0
    unknown = set(requested or []) - set(KNOWN_BACKENDS) - {"auto"}
    if unknown:
        raise BuildError(f"unknown backend(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(KNOWN_BACKENDS)}")
    plan = backend_plan(requested)
    cuda_arch = opts.cuda_arch or default_cuda_arch()
    variants = cpu_variants()

    def tree(name: str) -> tuple[list[str], str]:
        args = cmake_args(name, cuda_arch if name == "cuda" else None)
        return args, build_key(name, args)

    if opts.print_tools_dir:
        print(cache_root() / f"cpu-{tree('cpu')[1]}" / "bin")
        return 0
    if opts.list:
        print(f"cpu variants: {', '.join(variants) if variants else 'all of ggml list'}"
              " (CORRAL_CPU_VARIANTS: native, all or a comma list)")
        for name, ok, why in plan:
            extra = ""
            if ok:
                where = cache_root() / f"{name}-{tree(name)[1]}"
                done = (where / "corral-targets.json").exists()
                extra = f"  [{'cached' if done else 'not built yet'}: {where}]"
            print(f"{name:<7} {'build' if ok else 'skip':<6} {why}{extra}")
        return 0

    py_key = python_key()
    started = time.monotonic()
    for name, ok, _why in plan:
        if not ok:
            continue
        args, key = tree(name)
        targets = (LIBRARY_TARGETS + cpu_targets(variants)
                   + (TOOL_TARGETS if (opts.tools and name == "cpu") else ()))
        main_tree = Tree(name, args, key, targets)
        build_trees([main_tree], opts.jobs, opts.force)
        install_backend(name, main_tree.bin_dir, key, ROOT / "plugins" / name / "_lib", py_key, variants)
        if opts.tools and name == "cpu":
            log(f"tools: {main_tree.bin_dir / 'llama-bench'}, {main_tree.bin_dir / 'llama-server'}")
    log(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as exc:
        print(f"build_backends: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
