"""Model names: parse ``[scheme://][host[:port]/][namespace/]model[:tag]``, validate, display."""

from __future__ import annotations

import re

import msgspec

from corral.errors import InvalidModelNameError

DEFAULT_SCHEME = "https"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# compat(ollama): types/model/name.go — every part starts with [A-Za-z0-9_] and continues with
# [A-Za-z0-9_.-]; only the host may hold ":" (a port); the namespace may not hold ".".
# Because no part can start with "." or contain "/" or "\", no part can ever be "..".
_PART = {
    "host": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),
    "namespace": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    "model": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
}
_SCHEMES = ("http", "https")


class ModelName(msgspec.Struct, frozen=True):
    """A fully qualified model name; every part is filled in (defaults applied)."""

    host: str = DEFAULT_HOST
    namespace: str = DEFAULT_NAMESPACE
    model: str = ""
    tag: str = DEFAULT_TAG
    scheme: str = DEFAULT_SCHEME

    @property
    def display(self) -> str:
        """Ollama's ``DisplayShortest``: drop the default host, then the ``library`` namespace."""
        if self.host.lower() == DEFAULT_HOST:
            if self.namespace.lower() == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        """``host/namespace/model:tag`` (no scheme), as Ollama prints it in capability errors."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """(host, namespace, model, tag): the four path components of the manifest."""
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def repository(self) -> str:
        """``namespace/model``: the repository path in registry URLs."""
        return f"{self.namespace}/{self.model}"

    def matches(self, other: ModelName) -> bool:
        """Case-insensitive equality of the four parts (the scheme is not part of identity)."""
        return tuple(p.lower() for p in self.parts) == tuple(p.lower() for p in other.parts)

    def __str__(self) -> str:
        return self.display


def parse_name(raw: str) -> ModelName:
    """Parse a user-supplied model name, filling Ollama's defaults.

    Raises:
        InvalidModelNameError: on any character, length or shape violation. Nothing touches the
            disk before this check, so a hostile name cannot name a path.
    """
    if not isinstance(raw, str):
        raise InvalidModelNameError("invalid model name: a name must be a string")
    text = raw.strip()
    if not text:
        raise InvalidModelNameError("invalid model name: the name is empty")
    if len(text) > 600:
        raise InvalidModelNameError("invalid model name: the name is too long")
    shown = text if text.isprintable() else repr(text)
    scheme = DEFAULT_SCHEME
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme.lower() not in _SCHEMES:
            raise InvalidModelNameError(f'invalid model name "{shown}": scheme must be http or https')
        scheme = scheme.lower()
    # compat(ollama): the tag is what follows the last ":" only when it comes after the last "/",
    # so "host:5000/ns/model" keeps its port.
    tag = DEFAULT_TAG
    colon, slash = text.rfind(":"), text.rfind("/")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
    pieces = text.split("/")
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(pieces) == 1:
        (model,) = pieces
    elif len(pieces) == 2:
        namespace, model = pieces
    elif len(pieces) == 3:
        host, namespace, model = pieces
    else:
        raise InvalidModelNameError(f'invalid model name "{shown}": too many "/" separated parts')
    for kind, value in (("host", host), ("namespace", namespace), ("model", model), ("tag", tag)):
        if not _PART[kind].fullmatch(value):
            raise InvalidModelNameError(f'invalid model name "{shown}": {_why(kind, value)}')
    if host.count(":") > 1:
        raise InvalidModelNameError(f'invalid model name "{shown}": the host has more than one ":"')
    return ModelName(host=host, namespace=namespace, model=model, tag=tag, scheme=scheme)


def _why(kind: str, value: str) -> str:
    limit = 350 if kind == "host" else 80
    if not value:
        return f"the {kind} is empty"
    if len(value) > limit:
        return f"the {kind} is longer than {limit} characters"
    if not re.match(r"[A-Za-z0-9_]", value):
        return f"the {kind} must start with a letter, digit or underscore"
    allowed = {
        "host": "letters, digits, '_', '.', '-' and ':'",
        "namespace": "letters, digits, '_' and '-'",
    }.get(kind, "letters, digits, '_', '.' and '-'")
    return f"the {kind} may only contain {allowed}"


def is_valid_name(raw: str) -> bool:
    """True when ``parse_name`` would accept ``raw``."""
    try:
        parse_name(raw)
    except InvalidModelNameError:
        return False
    return True
