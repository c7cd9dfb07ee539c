"""The metal backend plugin: llama.cpp on Apple Silicon GPUs."""

from __future__ import annotations

from pathlib import Path

from corral_plugins._llama.backend import LlamaBackend
from corral_plugins.metal.probe import probe_metal

LIB_DIR = Path(__file__).resolve().parent / "_lib"
PRIORITY = 300

# The plugin object: the "metal" entry point names it, as a third party's names theirs.
plugin = LlamaBackend("metal", LIB_DIR, PRIORITY, probe_metal)
