"""What a default install compiles and ships: this CPU's variant and the baseline, llama.cpp's fit without
the rest of libllama-common, everything else once (read from the configured build tree's own ninja file)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bb() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_corral_build_backends", ROOT / "build_backends.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_default_build_compiles_two_variants_the_fit_and_no_tool_code(bb: ModuleType) -> None:
    variants = bb.cpu_variants()
    if variants is None or not shutil.which("ninja") or not shutil.which("cmake"):
        pytest.skip("not an x86 per-variant build with ninja here")
    tree = bb.cache_root() / f"cpu-{bb.build_key('cpu', bb.cmake_args('cpu', None))}"
    if not (tree / "build.ninja").is_file():
        pytest.skip(f"the cpu build tree is not configured here ({tree})")
    targets = [*bb.LIBRARY_TARGETS, *bb.cpu_targets(variants)]
    # every command a build of the targets runs from scratch, whatever is already built
    commands = subprocess.run(["ninja", "-C", str(tree), "-t", "commands", *targets], check=True,
                              capture_output=True, text=True).stdout.splitlines()
    objects = [c.split(" -o ", 1)[1].split()[0] for c in commands if " -c " in c and " -o " in c]
    cpu_modules = {o.split("/CMakeFiles/", 1)[1].split(".dir/", 1)[0] for o in objects
                   if "/CMakeFiles/ggml-cpu-" in o and "feats" not in o}
    assert cpu_modules == {f"ggml-cpu-{v}" for v in variants}
    assert any(o.endswith("llama-common-fit.dir/common/fit.cpp.o") for o in objects)
    assert not [o for o in objects if "llama-common.dir" in o or "httplib" in o or "server" in o]
    assert len(objects) == len(set(objects))  # nothing compiled twice (ggml-base once, not per variant)


def test_a_folder_ships_only_the_variants_asked_for(bb: ModuleType, tmp_path: Path) -> None:
    names = ["libggml-base.so.0", "libggml-cpu-x64.so", "libggml-cpu-zen4.so", "libggml-cpu-haswell.so",
             "libggml-rpc.so", "libllama.so.0", "libllama-common-fit.so.0", "libllama-common.so.0",
             "libmtmd.so.0", "libggml.so.0", "llama-server"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "libllama.so").symlink_to("libllama.so.0")
    shipped = {p.name for p in bb.shipped_libraries(tmp_path, ["zen4", "x64"])}
    assert shipped == {"libggml-base.so.0", "libggml-cpu-x64.so", "libggml-cpu-zen4.so", "libggml-rpc.so",
                       "libllama.so.0", "libllama-common-fit.so.0", "libmtmd.so.0", "libggml.so.0"}
    everything = {p.name for p in bb.shipped_libraries(tmp_path, None)}
    assert everything == shipped | {"libggml-cpu-haswell.so"}
