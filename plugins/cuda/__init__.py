"""The cuda backend plugin: llama.cpp with NVIDIA GPU offload."""

from __future__ import annotations

from pathlib import Path

from corral_plugins._llama.backend import LlamaBackend
from corral_plugins.cuda.probe import probe_cuda

LIB_DIR = Path(__file__).resolve().parent / "_lib"
PRIORITY = 200

# The plugin object: the "cuda" entry point names it, as a third party's names theirs.
plugin = LlamaBackend("cuda", LIB_DIR, PRIORITY, probe_cuda)
