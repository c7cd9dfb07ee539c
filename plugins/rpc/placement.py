"""What a model needs on the devices llama.cpp splits it over: a lower bound, to refuse early and clearly.

llama.cpp keeps the input layer (``token_embd``) on the CPU and puts the last ``n_gpu_layers`` repeating
layers, then the output layer, on the split devices, with each offloaded layer's KV cache beside it
(src/llama-model.cpp ``load_tensors``). Weights and KV cache are known from the GGUF header; compute
buffers are not, so the estimate only says when a model can certainly not fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.gguf import GGUFInfo, tensor_nbytes
from corral.types import LoadOptions

_LAYER = re.compile(r"blk\.(\d+)\.")
# Bytes per KV element of each cache type corral offers (ggml block sizes: q8_0 34/32, q4_0 18/32).
_KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@dataclass(frozen=True)
class Need:
    """Bytes the split devices must hold at least."""

    weights: int
    kv_cache: int
    layers: int  # repeating layers offloaded
    n_layer: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def device_need(info: GGUFInfo, options: LoadOptions) -> Need:
    """The weights and KV cache of the layers ``options.num_gpu`` offloads (-1: all, and the output)."""
    kv = info.kv
    arch = str(kv.get("general.architecture", ""))
    per_layer: dict[int, int] = {}
    output = embd = 0
    has_output = False
    for t in info.tensors:
        m = _LAYER.match(t.name)
        if m:
            per_layer[int(m.group(1))] = per_layer.get(int(m.group(1)), 0) + tensor_nbytes(t)
        elif t.name.startswith("token_embd."):
            embd += tensor_nbytes(t)
        else:
            output += tensor_nbytes(t)
            has_output = has_output or t.name == "output.weight"
    if not has_output:
        output += embd  # tied embeddings: llama.cpp puts a second copy on the output device
    n_layer = _int(kv.get(f"{arch}.block_count")) or (max(per_layer) + 1 if per_layer else 0)
    n_gpu = n_layer + 1 if options.num_gpu < 0 else min(options.num_gpu, n_layer + 1)
    first = n_layer + 1 - n_gpu  # layers [first, n_layer) and the output go to the devices
    offloaded = [il for il in range(max(first, 0), n_layer)]
    weights = sum(per_layer.get(il, 0) for il in offloaded) + (output if n_gpu > 0 else 0)
    kv_cache = len(offloaded) * _kv_per_layer(kv, arch, options)
    return Need(weights=weights, kv_cache=kv_cache, layers=len(offloaded), n_layer=n_layer)


def _kv_per_layer(kv: dict, arch: str, options: LoadOptions) -> int:
    """One layer's K and V for every cell of the unified cache the batcher makes (num_ctx x num_parallel)."""
    n_embd = _int(kv.get(f"{arch}.embedding_length"))
    n_head = _int(kv.get(f"{arch}.attention.head_count"))
    n_head_kv = _int(kv.get(f"{arch}.attention.head_count_kv")) or n_head
    head = n_embd // n_head if n_head else 0
    k_len = _int(kv.get(f"{arch}.attention.key_length")) or head
    v_len = _int(kv.get(f"{arch}.attention.value_length")) or head
    cells = max(256, options.num_ctx * max(1, options.num_parallel))
    return int(cells * n_head_kv * (k_len + v_len) * _KV_BYTES.get(options.kv_cache_type, 2.0))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
