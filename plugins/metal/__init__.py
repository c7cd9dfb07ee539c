"""The metal backend plugin: llama.cpp on Apple Silicon GPUs."""

from __future__ import annotations

from pathlib import Path

from corral_plugins._llama.backend import LlamaBackend
from corral_plugins.metal.probe import probe_metal

LIB_DIR = Path(__file__).resolve().parent / "_lib"
PRIORITY = 300

plugin = LlamaBackend("metal", LIB_DIR, PRIORITY, probe_metal)
# pluggy registers this module: its hook functions are the instance's bound methods.
globals().update(plugin.hooks())
