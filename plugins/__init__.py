"""In-tree backend plugins for corral (llama.cpp through cffi)."""
