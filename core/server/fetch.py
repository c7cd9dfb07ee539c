"""Images that OpenAI clients name by http(s) URL: refused unless the operator turns fetching on
(CORRAL_FETCH_IMAGES), and then fetched with bounded size, time and redirects, without blocking the
event loop."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from corral.errors import InvalidRequestError

__all__ = ["FETCH_TIMEOUT_S", "fetch_images", "is_remote"]

FETCH_TIMEOUT_S = 15.0
_MAX_REDIRECTS = 3


def is_remote(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


async def fetch_images(urls: list[str], *, enabled: bool, max_bytes: int) -> dict[str, bytes]:
    """The bytes behind each http(s) URL, fetched concurrently; a 400 naming the URL when fetching is
    off, the URL is not http(s), the server does not answer 200 in time, or the body is too large."""
    if not urls:
        return {}
    if not enabled:
        raise InvalidRequestError("invalid image_url: only base64 data URIs are supported (the server "
                                  "fetches http(s) images only when CORRAL_FETCH_IMAGES=1)")
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True, limits=limits,
                                 max_redirects=_MAX_REDIRECTS) as client:
        unique = list(dict.fromkeys(urls))
        bodies = await asyncio.gather(*(_fetch(client, u, max_bytes) for u in unique))
    return dict(zip(unique, bodies, strict=True))


async def _fetch(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    shown = url if len(url) <= 200 else url[:200] + "..."
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(f"invalid image_url {shown!r}: not an http(s) URL")
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise InvalidRequestError(f"could not fetch image_url {shown!r}: HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise InvalidRequestError(f"image_url {shown!r} is larger than {max_bytes} bytes "
                                          "(CORRAL_MAX_MEDIA_SIZE)")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise InvalidRequestError(f"image_url {shown!r} is larger than {max_bytes} bytes "
                                              "(CORRAL_MAX_MEDIA_SIZE)")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise InvalidRequestError(f"could not fetch image_url {shown!r}: {type(exc).__name__}") from None
