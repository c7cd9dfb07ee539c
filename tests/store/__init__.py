"""Tests of the model store (corral.store, corral.names, corral.gguf)."""
