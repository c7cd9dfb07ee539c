"""Image and audio file paths inside a prompt, attached to the message as Ollama's CLI attaches them."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

from corral.errors import CorralError
from corral.media import MediaLimits, inspect_media

__all__ = ["attach_media"]

# compat(ollama): cmd/interactive.go extractFileNames: a path that starts with ./ / \ (or a drive, or
# ~/ here), may hold escaped spaces, and ends in a media extension. Non-paths it catches are dropped
# below because no such file exists.
_PATH = re.compile(r"(?:[a-zA-Z]:)?(?:\./|~/|/|\\)[\S\\ ]+?\.(?i:jpg|jpeg|png|webp|gif|bmp|wav|mp3|flac)\b")


def _normalize(path: str) -> str:
    return path.replace("\\ ", " ").replace("%20", " ")


def attach_media(text: str, limits: MediaLimits) -> tuple[str, list[str]]:
    """The prompt without the paths of files that exist, and those files as base64 (the /api/chat
    ``images`` form). A file that is not an image or audio clip corral reads, or is too large, is a
    ``CorralError`` naming it; a path that names no file stays in the prompt as text."""
    attached: list[str] = []
    for found in _PATH.findall(text):
        path = _normalize(found)
        file = Path(path).expanduser()
        if not file.is_file():
            continue
        try:
            with file.open("rb") as f:
                data = f.read(limits.max_bytes + 1)
        except OSError as exc:
            raise CorralError(f"couldn't read {path}: {exc.strerror or exc}") from None
        info = inspect_media(data, limits, f"'{path}'")
        print(f"Added {info.kind} '{path}'", file=sys.stderr)
        for form in (f"'{path}'", f"'{found}'", found):
            text = text.replace(form, "")
        attached.append(base64.b64encode(data).decode("ascii"))
    return text.strip(), attached
