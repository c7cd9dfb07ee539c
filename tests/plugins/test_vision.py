"""Images through libmtmd on the tiny vision model: answers that depend on the image, image tokens in the
counts, prefix reuse keyed by the image bytes, bad media refused, encoding beside other streams."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

from corral.config import Config
from corral.errors import CapabilityError, ContextLengthError, InvalidRequestError
from corral.plugins import load_plugins
from corral.selection import BackendHooks
from corral.testing.tinymodel import write_tiny_gguf
from corral.testing.tinyvision import png_bytes, write_tiny_projector
from corral.types import CancelToken, GenerationRequest, LoadOptions, MediaInput, SamplingParams

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def hooks(cpu_lib: Path) -> BackendHooks:
    return BackendHooks(load_plugins(Config(load_plugins=("cpu",))), "cpu")


@pytest.fixture(scope="module")
def vision(hooks, tiny_gguf: Path, tiny_projector):
    """The tiny llama model with its projector, one slot (so each request finds the previous KV)."""
    handle = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=512, num_parallel=1,
                                                          projector=tiny_projector.path))
    yield handle
    hooks.unload(handle)


def tokens(hooks, handle, text: str, first: bool = False) -> list[int]:
    return hooks.tokenize(handle, text, add_special=first, parse_special=True)


def ask(hooks, handle, pieces: list[str | bytes], num_predict: int = 10, **kw):
    """Generate from text pieces and images in order (text tokenized piece by piece, as mtmd does)."""
    prompt: list[int] = []
    media = []
    for i, p in enumerate(pieces):
        if isinstance(p, bytes):
            media.append(MediaInput(data=p, position=len(prompt)))
        else:
            prompt += tokens(hooks, handle, p, first=i == 0)
    request = GenerationRequest(prompt=prompt, media=media, num_predict=num_predict, sampling=GREEDY, **kw)
    events = list(hooks.generate(handle, request, CancelToken()))
    return [e.token for e in events if e.token >= 0], events[-1].stats, len(prompt)


def test_the_projector_loads_beside_the_model(vision):
    assert vision.info.vision and not vision.info.audio
    assert vision.options.projector


def test_answers_depend_on_the_image_and_count_its_tokens(hooks, vision, sample_images, tiny_projector):
    red, n_text = ask(hooks, vision, ["hello ", sample_images["red"], " what is this"])[::2]
    again, stats, _ = ask(hooks, vision, ["hello ", sample_images["red"], " what is this"])
    gradient = ask(hooks, vision, ["hello ", sample_images["gradient"], " what is this"])[0]
    assert red == again and red != gradient
    assert stats.prompt_tokens == n_text + tiny_projector.n_image_tokens
    two = ask(hooks, vision, [sample_images["red"], "and", sample_images["gradient"], "?"])
    assert two[1].prompt_tokens == two[2] + 2 * tiny_projector.n_image_tokens


def test_a_prefix_holding_an_image_is_reused_only_for_the_same_image_bytes(hooks, vision, sample_images,
                                                                          tiny_projector):
    n_img = tiny_projector.n_image_tokens
    head = tokens(hooks, vision, "look ", first=True)
    ask(hooks, vision, ["look ", sample_images["red"], " at this"])
    # The next turn extends the same conversation: the image's KV is found, not encoded again.
    _, stats, _ = ask(hooks, vision, ["look ", sample_images["red"], " at this", " and tell me"])
    assert stats.cached_tokens >= len(head) + n_img
    # The same text with another image: the cache stops where the image bytes differ.
    _, stats, _ = ask(hooks, vision, ["look ", sample_images["gradient"], " at this"])
    assert stats.cached_tokens == len(head)


def test_bad_media_get_clear_errors_and_the_model_keeps_serving(hooks, vision, sample_images):
    png = sample_images["red"]
    huge = png[:16] + struct.pack(">II", 100_000, 100_000) + png[24:]  # a header claiming 10^10 pixels
    cases = {
        b"this is not an image at all": "not a PNG, JPEG, GIF or BMP",
        png[: len(png) // 2]: "damaged",
        huge: "pixels",
        b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 16: "WEBP",
        b"": "empty",
    }
    for data, message in cases.items():
        with pytest.raises(InvalidRequestError, match=message):
            ask(hooks, vision, ["x ", data])
    wav = b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + b"\x00" * 24
    with pytest.raises(CapabilityError, match="audio input is not supported"):
        _ask_audio(hooks, vision, wav)
    with pytest.raises(InvalidRequestError, match="outside the prompt"):
        list(hooks.generate(vision, GenerationRequest(prompt=[1], media=[MediaInput(data=png, position=5)]),
                            CancelToken()))
    assert ask(hooks, vision, ["hello ", png, " what is this"])[0]


def _ask_audio(hooks, handle, data: bytes):
    request = GenerationRequest(prompt=[1], media=[MediaInput(data=data, position=1, kind="audio")],
                                num_predict=2, sampling=GREEDY)
    return list(hooks.generate(handle, request, CancelToken()))


def test_an_image_that_does_not_fit_is_refused(hooks, tiny_gguf, tiny_projector, sample_images):
    handle = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=32, num_parallel=1,
                                                          projector=tiny_projector.path))
    try:
        with pytest.raises(ContextLengthError):
            ask(hooks, handle, ["a long enough prompt to fill the small context " * 2, sample_images["red"]])
    finally:
        hooks.unload(handle)


def test_a_model_without_a_projector_refuses_media(hooks, tiny_gguf, sample_images):
    handle = hooks.load_model(str(tiny_gguf), LoadOptions(num_ctx=256, num_parallel=1))
    try:
        assert not handle.info.vision
        with pytest.raises(CapabilityError, match="no projector"):
            ask(hooks, handle, ["hi ", sample_images["red"]])
    finally:
        hooks.unload(handle)


def test_a_truncated_png_with_a_valid_header_never_reaches_another_decoder(hooks, vision):
    # Valid signature and IHDR, then nothing: stb_image fails, and corral never hands the bytes on.
    header = png_bytes(8, 8, lambda x, y: (0, 0, 0))[:33]
    with pytest.raises(InvalidRequestError, match="damaged"):
        ask(hooks, vision, ["x ", header])
    idat = zlib.compress(b"\x00" * 10)  # too few rows for the declared size
    chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    with pytest.raises(InvalidRequestError, match="damaged"):
        ask(hooks, vision, ["x ", header + chunk])


def test_images_are_encoded_beside_the_streams_already_generating(hooks, tmp_path):
    """The projector runs on its own thread and image rows are decoded in budgeted steps: a stream that
    is generating keeps getting tokens while a large image is encoded and evaluated."""
    model = write_tiny_gguf(tmp_path / "m.gguf", n_embd=128, n_ff=256, n_head=4, n_head_kv=2)
    proj = write_tiny_projector(tmp_path / "p.gguf", text_n_embd=128, n_embd=192, n_ff=512, n_layer=4,
                                n_head=4, image_size=320, patch_size=16)  # 400 image tokens
    handle = hooks.load_model(model.path, LoadOptions(num_ctx=1024, num_parallel=2, projector=proj.path))
    try:
        arrivals: list[float] = []
        started = threading.Event()

        def stream() -> None:
            prompt = tokens(hooks, handle, "once upon a time", True)
            request = GenerationRequest(prompt=prompt, num_predict=-1, sampling=GREEDY)
            cancel = CancelToken()
            for _ in hooks.generate(handle, request, cancel):
                arrivals.append(time.perf_counter())
                started.set()
                if len(arrivals) >= 4000 or done.is_set():
                    cancel.cancel()

        done = threading.Event()
        t = threading.Thread(target=stream)
        t.start()
        assert started.wait(30)
        image = png_bytes(64, 64, lambda x, y: (x * 4, y * 4, 128))
        head = tokens(hooks, handle, "see", True)
        submitted = time.perf_counter()
        events = list(hooks.generate(handle, GenerationRequest(
            prompt=head, media=[MediaInput(data=image, position=len(head))], num_predict=1, sampling=GREEDY),
            CancelToken()))
        answered = time.perf_counter()
        done.set()
        t.join(30)
        assert events[-1].stats.prompt_tokens == len(head) + proj.n_image_tokens
        during = [a for a in arrivals if submitted < a < answered]
        assert len(during) >= 10, "the other stream stalled while the image was encoded and evaluated"
    finally:
        hooks.unload(handle)
