"""Write a tiny vision projector GGUF (llava-style MLP, random weights) and test images, for tests."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TinyProjectorSpec", "png_bytes", "write_tiny_projector"]


@dataclass(frozen=True, repr=False)
class TinyProjectorSpec:
    """What ``write_tiny_projector`` wrote: the numbers a test may assert on."""

    path: str
    text_n_embd: int
    n_embd: int
    n_layer: int
    image_size: int
    patch_size: int
    n_image_tokens: int

    def __repr__(self) -> str:
        return f"TinyProjectorSpec(path={self.path!r}, n_image_tokens={self.n_image_tokens})"


def write_tiny_projector(
    path: str | os.PathLike[str],
    *,
    text_n_embd: int = 64,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 48,
    image_size: int = 32,
    patch_size: int = 8,
    seed: int = 1,
    name: str = "corral-tiny-projector",
) -> TinyProjectorSpec:
    """Write a projector GGUF (``general.architecture = clip``, projector type ``mlp``) that the pinned
    libmtmd loads beside a ``write_tiny_gguf`` text model whose ``n_embd`` is ``text_n_embd``.

    This is llava's layout, the simplest one clip.cpp accepts: a ViT (patch convolution, learned
    positions, pre-norm attention blocks) whose second-to-last block feeds a two-layer GELU MLP into
    the text model's embedding space. An image becomes ``(image_size / patch_size) ** 2`` tokens.
    Weights are random with a fixed ``seed``, so the same arguments give the same bytes.
    """
    import gguf

    if image_size % patch_size or n_embd % n_head or n_ff == n_embd:
        raise ValueError("image_size must divide by patch_size, n_embd by n_head, and n_ff differ from "
                         "n_embd (clip.cpp swaps a square-looking ffn)")
    if n_layer < 2:
        raise ValueError("llava reads the second-to-last block, so n_layer must be at least 2")
    rng = np.random.default_rng(seed)
    n_patches = (image_size // patch_size) ** 2

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    w = gguf.GGUFWriter(str(tmp), "clip")
    w.add_name(name)
    w.add_file_type(0)  # all F32
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", n_ff)
    w.add_uint32("clip.vision.block_count", n_layer)
    w.add_uint32("clip.vision.projection_dim", text_n_embd)
    w.add_uint32("clip.vision.attention.head_count", n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", patch_size)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def matrix(rows: int, cols: int) -> np.ndarray:
        # numpy shape (rows, cols) is ggml ne = [cols, rows]: cols is the input dimension.
        out: np.ndarray = rng.standard_normal((rows, cols), dtype=np.float32) * cols**-0.5
        return out.astype(np.float32)

    def vector(n: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(n, dtype=np.float32) * scale).astype(np.float32)

    # ggml's conv kernel ne = [patch, patch, 3, n_embd]: numpy (n_embd, 3, patch, patch).
    fan_in = 3 * patch_size * patch_size
    kernel = rng.standard_normal((n_embd, 3, patch_size, patch_size), dtype=np.float32) * fan_in**-0.5
    w.add_tensor("v.patch_embd.weight", kernel.astype(np.float32))
    w.add_tensor("v.patch_embd.bias", vector(n_embd))
    positions = rng.standard_normal((n_patches, n_embd)) * 0.5
    w.add_tensor("v.position_embd.weight", positions.astype(np.float32))
    w.add_tensor("v.pre_ln.weight", np.ones(n_embd, np.float32))
    w.add_tensor("v.pre_ln.bias", np.zeros(n_embd, np.float32))
    for i in range(n_layer):
        p = f"v.blk.{i}"
        for ln in ("ln1", "ln2"):
            w.add_tensor(f"{p}.{ln}.weight", np.ones(n_embd, np.float32))
            w.add_tensor(f"{p}.{ln}.bias", np.zeros(n_embd, np.float32))
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{t}.weight", matrix(n_embd, n_embd))
            w.add_tensor(f"{p}.{t}.bias", vector(n_embd))
        w.add_tensor(f"{p}.ffn_up.weight", matrix(n_ff, n_embd))
        w.add_tensor(f"{p}.ffn_up.bias", vector(n_ff))
        w.add_tensor(f"{p}.ffn_down.weight", matrix(n_embd, n_ff))
        w.add_tensor(f"{p}.ffn_down.bias", vector(n_embd))
    hidden = 2 * text_n_embd
    w.add_tensor("mm.0.weight", matrix(hidden, n_embd))
    w.add_tensor("mm.0.bias", vector(hidden))
    # Scaled so image embeddings are about as large as the text model's token embeddings (std ~1).
    w.add_tensor("mm.2.weight", matrix(text_n_embd, hidden) * 2.0)
    w.add_tensor("mm.2.bias", vector(text_n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return TinyProjectorSpec(path=str(path), text_n_embd=text_n_embd, n_embd=n_embd, n_layer=n_layer,
                             image_size=image_size, patch_size=patch_size, n_image_tokens=n_patches)


def png_bytes(width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    """An 8-bit RGB PNG whose pixel (x, y) is ``pixel(x, y)``: test images without an image library."""
    rows = b"".join(b"\x00" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))
