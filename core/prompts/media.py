"""Where images go in a prompt: Ollama's ``[img]`` placeholders (and ``[img-N]`` tags in raw prompts),
written as a private marker that the engine splits the rendered prompt on."""

from __future__ import annotations

import re
import secrets

from corral.errors import TemplateError

__all__ = ["MEDIA_MARKER", "place_images", "place_raw_images", "split_media"]

# Random per process, like llama-server's media marker: text a client writes can never pose as one.
MEDIA_MARKER = f"<__corral_media_{secrets.token_hex(12)}__>"
_RAW_TAG = re.compile(r"\[img-(\d+)\]")
_PLACEHOLDER = re.compile(r"\[img-(\d+)\]|\[img\]")


def place_images(content: str, n_images: int) -> str:
    """compat(ollama): each image takes the next ``[img]`` in ``content``; once none is left, the rest
    are put in front of the content, without a separator (server/prompt.go)."""
    prefix = ""
    for _ in range(n_images):
        if "[img]" in content:
            content = content.replace("[img]", MEDIA_MARKER, 1)
        else:
            prefix += MEDIA_MARKER
    return prefix + content


def place_raw_images(prompt: str, images: list[bytes]) -> tuple[str, list[bytes]]:
    """A raw prompt with markers, and its images in marker order: ``[img-N]`` places image N (as
    Ollama's runner reads raw prompts), each ``[img]`` the next image no tag names, and images still
    unplaced go in front, as ``place_images`` does for chat messages."""
    named = {int(m.group(1)) for m in _RAW_TAG.finditer(prompt) if int(m.group(1)) < len(images)}
    free = [img for i, img in enumerate(images) if i not in named]
    order: list[bytes] = []

    def place(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            i = int(m.group(1))
            if i >= len(images):
                return m.group(0)  # names no image of this request: plain text
            order.append(images[i])
        elif free:
            order.append(free.pop(0))
        else:
            return m.group(0)
        return MEDIA_MARKER

    text = _PLACEHOLDER.sub(place, prompt)
    return MEDIA_MARKER * len(free) + text, free + order


def split_media(text: str, n_media: int) -> list[str]:
    """The text between media markers (``n_media + 1`` pieces); a template that dropped or repeated
    an image's message would misplace images, so a count that differs is an error."""
    parts = text.split(MEDIA_MARKER)
    if len(parts) - 1 != n_media:
        raise TemplateError(f"the prompt template placed {len(parts) - 1} of the request's {n_media} "
                            "images; it must render every message that carries one exactly once")
    return parts
