"""Encoded images and audio from clients: what kind each is, read from its header, with limits checked
before anything decodes it."""

from __future__ import annotations

import struct

import msgspec

from corral.errors import InvalidRequestError

__all__ = ["IMAGE_FORMATS", "MediaInfo", "MediaLimits", "inspect_media"]

# What a backend is given to decode: formats llama.cpp's mtmd reads (stb_image, miniaudio).
IMAGE_FORMATS = ("png", "jpeg", "gif", "bmp")
AUDIO_FORMATS = ("wav", "mp3", "flac")
# JPEG start-of-frame markers (SOF0..SOF15 except DHT, JPG and DAC), which carry the dimensions.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class MediaLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on untrusted media, checked from headers before any decoder runs."""

    max_bytes: int = 16 * 1024 * 1024  # one file
    max_pixels: int = 32 * 1024 * 1024  # width x height of one image
    max_count: int = 32  # files in one request


class MediaInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a file's header says: ``kind`` is image or audio; images know their size."""

    kind: str
    format: str
    width: int = 0
    height: int = 0


def _fail(what: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"{what} {why}")


def inspect_media(data: bytes, limits: MediaLimits = MediaLimits(), what: str = "the image") -> MediaInfo:
    """Identify ``data`` from its first bytes and check it against ``limits``.

    Reads headers only (never decodes): PNG, JPEG, GIF, BMP images (and WebP, which is named so that
    the caller can say it is not supported) and WAV, MP3, FLAC audio. Anything else, a header that
    is cut short, or a size over the limits is an ``InvalidRequestError`` naming ``what``.
    """
    n = len(data)
    if n == 0:
        raise _fail(what, "is empty")
    if n > limits.max_bytes:
        raise _fail(what, f"is {_mib(n)}; the limit is {_mib(limits.max_bytes)} (CORRAL_MAX_MEDIA_SIZE)")
    info = _image(data) or _audio(data)
    if info is None:
        raise _fail(what, "is not a PNG, JPEG, GIF or BMP image (nor WAV, MP3 or FLAC audio)")
    if info.kind == "image":
        if info.format not in IMAGE_FORMATS:  # known by its header, but no decoder here reads it
            raise _fail(what, f"is {info.format.upper()}; send PNG, JPEG, GIF or BMP")
        if info.width <= 0 or info.height <= 0:
            raise _fail(what, f"is a damaged {info.format.upper()}: its header has no valid size")
        if info.width * info.height > limits.max_pixels:
            raise _fail(what, f"is {info.width}x{info.height} pixels; the limit is {limits.max_pixels} "
                              "pixels (CORRAL_MAX_IMAGE_PIXELS)")
    return info


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _image(d: bytes) -> MediaInfo | None:
    if d.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(d) < 24 or d[12:16] != b"IHDR":
            return MediaInfo(kind="image", format="png")
        w, h = struct.unpack(">II", d[16:24])
        return MediaInfo(kind="image", format="png", width=w, height=h)
    if d.startswith(b"\xff\xd8\xff"):
        w, h = _jpeg_size(d)
        return MediaInfo(kind="image", format="jpeg", width=w, height=h)
    if d[:6] in (b"GIF87a", b"GIF89a"):
        w, h = struct.unpack("<HH", d[6:10]) if len(d) >= 10 else (0, 0)
        return MediaInfo(kind="image", format="gif", width=w, height=h)
    if d.startswith(b"BM") and len(d) >= 26:
        w, h = struct.unpack("<ii", d[18:26])
        return MediaInfo(kind="image", format="bmp", width=w, height=abs(h))
    if len(d) >= 12 and d[:4] == b"RIFF" and d[8:12] == b"WEBP":
        return MediaInfo(kind="image", format="webp")
    return None


def _jpeg_size(d: bytes) -> tuple[int, int]:
    """(width, height) from the first start-of-frame segment; (0, 0) if the walk finds none."""
    i, n = 2, len(d)
    while i + 4 <= n:
        if d[i] != 0xFF:
            return 0, 0
        marker = d[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return 0, 0
        (length,) = struct.unpack(">H", d[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > n:
                return 0, 0
            h, w = struct.unpack(">HH", d[i + 5 : i + 9])
            return w, h
        if length < 2:
            return 0, 0
        i += 2 + length
    return 0, 0


def _audio(d: bytes) -> MediaInfo | None:
    # The same magic numbers mtmd's helper uses to tell audio from images.
    if len(d) < 12:
        return None
    if d[:4] == b"RIFF" and d[8:12] == b"WAVE":
        return MediaInfo(kind="audio", format="wav")
    if d[:3] == b"ID3" or (d[0] == 0xFF and d[1] & 0xE0 == 0xE0):
        return MediaInfo(kind="audio", format="mp3")
    if d[:4] == b"fLaC":
        return MediaInfo(kind="audio", format="flac")
    return None
