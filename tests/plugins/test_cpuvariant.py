"""CPU variant choice: scores, a real child-process verification, SIGILL fallback, cache and override."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from corral.config import Config
from corral.errors import BackendError

# A "variant" that claims to be the best fit for every CPU and then executes an illegal instruction
# when ggml initialises it: exactly what an AMX build does on a CPU whose hypervisor forbids AMX.
TRAP_VARIANT = r"""
int ggml_backend_score(void) { return 1 << 30; }
void * ggml_backend_init(void) { __builtin_trap(); return 0; }
"""


def test_chosen_variant_is_the_best_that_verifies(cpu_lib, cpu_choice):
    from corral_plugins._llama.cpuvariant import score_variants

    scores = score_variants(cpu_lib)
    assert scores[cpu_choice.name] > 0
    for name, score in scores.items():
        if score > scores[cpu_choice.name]:
            assert name in cpu_choice.rejected, f"{name} scored higher but was neither chosen nor rejected"
        if score == 0:
            assert cpu_choice.rejected.get(name, "").startswith("not supported by this CPU") \
                or cpu_choice.source != "verified"


@pytest.fixture(scope="module")
def trap_lib(cpu_lib, cpu_choice, tmp_path_factory):
    """A build folder with the real libraries, the verified variant, and a variant that dies of SIGILL."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the trapping variant")
    d = tmp_path_factory.mktemp("trap") / "_lib"
    d.mkdir()
    for p in cpu_lib.iterdir():
        shipped = p.name.startswith(("libllama", "libmtmd", "libggml.", "libggml-base", "_llama_"))
        if shipped or p == cpu_choice.path:
            shutil.copy2(p, d / p.name)
    src = d.parent / "trap.c"
    src.write_text(TRAP_VARIANT)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(d / "libggml-cpu-trap.so"), str(src)], check=True)
    return d


def test_variant_that_crashes_is_rejected_and_the_next_one_used(trap_lib, cpu_choice, tiny_gguf):
    from corral_plugins._llama.cpuvariant import choose_variant, score_variants

    assert score_variants(trap_lib)["trap"] == 1 << 30
    # The tiny model keeps the check quick; the plugin itself verifies with Gemma.
    choice = choose_variant(trap_lib, model=tiny_gguf, use_cache=False)
    assert choice.name == cpu_choice.name
    assert "SIGILL" in choice.rejected["trap"]


# A variant built for a CPU this one is not (the folder came from a newer machine, or a wheel carries it):
# ggml's score is 0 when an instruction it was compiled with is missing; it must never be initialised.
FOREIGN_VARIANT = r"""
int ggml_backend_score(void) { return 0; }
void * ggml_backend_init(void) { __builtin_trap(); return 0; }
"""


def test_folder_moved_to_a_cpu_it_cannot_run_on_falls_back_to_the_baseline(cpu_lib, tiny_gguf, tmp_path,
                                                                             caplog):
    from corral_plugins._llama.cpufeatures import BASELINE
    from corral_plugins._llama.cpuvariant import choose_variant

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the foreign variant")
    baseline = cpu_lib / f"libggml-cpu-{BASELINE}.so"
    if not baseline.exists():
        pytest.skip(f"this build has no {BASELINE} variant")
    moved = tmp_path / "_lib"
    moved.mkdir()
    for p in cpu_lib.iterdir():  # everything but the CPU variants, and the baseline
        if not p.name.startswith("libggml-cpu") or p == baseline:
            shutil.copy2(p, moved / p.name)
    src = tmp_path / "foreign.c"
    src.write_text(FOREIGN_VARIANT)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(moved / "libggml-cpu-newer.so"), str(src)], check=True)
    with caplog.at_level("WARNING", logger="corral.llama.cpu"):
        choice = choose_variant(moved, model=tiny_gguf, use_cache=False)
    assert choice.name == BASELINE and choice.source == "verified"
    assert choice.rejected["newer"] == "not supported by this CPU (score 0)"
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "portable baseline" in warning and "newer" in warning and str(moved) in warning


def test_verdict_is_cached(trap_lib, tiny_gguf, monkeypatch, tmp_path):
    from corral_plugins._llama import cpuvariant

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = cpuvariant.choose_variant(trap_lib, model=tiny_gguf)
    assert first.source == "verified"
    again = cpuvariant.choose_variant(trap_lib, model=tiny_gguf)
    assert again.source == "cache" and again.name == first.name and "SIGILL" in again.rejected["trap"]
    assert (tmp_path / "corral" / cpuvariant.CACHE_NAME).is_file()


def test_override(cpu_lib, monkeypatch):
    from corral_plugins._llama.cpuvariant import choose_variant

    monkeypatch.setenv("CORRAL_CPU_VARIANT", "x64")
    config = Config.from_env()
    assert config.cpu_variant == "x64"
    choice = choose_variant(cpu_lib, config.cpu_variant)
    assert (choice.name, choice.source) == ("x64", "override")
    with pytest.raises(BackendError, match="available:"):
        choose_variant(cpu_lib, "pentium2")


def test_empty_folder_is_a_clear_error(tmp_path):
    from corral_plugins._llama.cpuvariant import choose_variant

    with pytest.raises(BackendError, match="build_backends.py"):
        choose_variant(tmp_path)


def test_verify_rejects_a_broken_model(cpu_choice, tmp_path):
    from corral_plugins._llama.cpuvariant import verify_variant

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    why = verify_variant(cpu_choice.path, bad)
    assert why is not None and "exit" in why
