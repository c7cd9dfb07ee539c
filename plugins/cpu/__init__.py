"""The cpu backend plugin: llama.cpp on the CPU, with the best CPU variant that verifiably runs here."""

from __future__ import annotations

from pathlib import Path

from corral_plugins._llama.backend import LlamaBackend
from corral_plugins.cpu.probe import probe_cpu

LIB_DIR = Path(__file__).resolve().parent / "_lib"
PRIORITY = 100

# The plugin object: the "cpu" entry point names it, as a third party's names theirs.
plugin = LlamaBackend("cpu", LIB_DIR, PRIORITY, probe_cpu)
