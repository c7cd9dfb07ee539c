"""Session-wide fixtures for the llama.cpp binding tests: the built cpu backend and one Gemma load."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.testing.fixtures import sample_images, tiny_gguf, tiny_gguf_spec, tiny_projector
from corral.types import LoadOptions

__all__ = ["sample_images", "tiny_gguf", "tiny_gguf_spec", "tiny_projector"]

CPU_LIB = Path(__file__).resolve().parents[2] / "plugins" / "cpu" / "_lib"


def cpu_built() -> bool:
    return any(CPU_LIB.glob("_llama_cpu*")) and any(CPU_LIB.glob("libllama*"))


@pytest.fixture(scope="session")
def cpu_lib() -> Path:
    if not cpu_built():
        pytest.skip("plugins/cpu/_lib is not built: run build_backends.py --backend cpu")
    return CPU_LIB


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    from corral_plugins._llama.assets import gemma_gguf

    return gemma_gguf()


@pytest.fixture(scope="session")
def cpu_choice(cpu_lib: Path):
    """The CPU variant the cpu backend's probe chooses (verified with its own tiny model)."""
    from corral_plugins._llama.cpuvariant import choose_variant

    return choose_variant(cpu_lib)


@pytest.fixture(scope="session")
def native(cpu_lib: Path, cpu_choice):
    """The process-wide binding (llama.cpp is initialised once per process)."""
    from corral_plugins._llama import library

    return library.load(cpu_lib, [cpu_choice.path])


@pytest.fixture(scope="session")
def gemma(native, gemma_path: Path):
    """Gemma 3 270M loaded once for the whole session (a load costs seconds: the 262k vocabulary)."""
    from corral_plugins._llama.model import LlamaModel

    model = LlamaModel(native, gemma_path, LoadOptions(num_ctx=1024, num_parallel=2))
    yield model
    model.free()
