"""The corral error hierarchy; it knows nothing of HTTP, cffi or the terminal."""

from __future__ import annotations


class CorralError(Exception):
    """Base of every error corral shows to a user or a client.

    The message is written for a person: it says what went wrong and, where it can, what to do.
    The HTTP layer maps each subclass to one status code (see ``corral.server.errors``); the CLI
    prints the message as one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ---- 400: the request itself is wrong ------------------------------------------------------------
class InvalidRequestError(CorralError):
    """A request that can never succeed as written (bad field, bad option, bad combination)."""


class InvalidModelNameError(InvalidRequestError):
    """A model name that does not follow ``[scheme://][host/][namespace/]model[:tag]``."""


class CapabilityError(InvalidRequestError):
    """The model lacks a capability the request needs (tools, insert, thinking, embedding, ...)."""


class ContextLengthError(InvalidRequestError):
    """The prompt does not fit the context and may not be truncated or shifted."""


class InvalidModelFileError(InvalidRequestError):
    """A file that is not a usable GGUF model (not GGUF, truncated, hostile metadata)."""


class ModelfileError(InvalidRequestError):
    """A Modelfile that does not parse; the message names the line."""


class TemplateError(InvalidRequestError):
    """A prompt template that does not parse, raises, or exceeds its limits."""


class GrammarError(InvalidRequestError):
    """A JSON schema or grammar that cannot be turned into a sampling grammar."""


# ---- 404 -----------------------------------------------------------------------------------------
class ModelNotFoundError(CorralError):
    """No model of that name in the store (or in the registry, for a pull)."""


# ---- 5xx -----------------------------------------------------------------------------------------
class ServerBusyError(CorralError):
    """The request queue is full; the client may retry."""


class BackendError(CorralError):
    """A failure inside a backend (native error, allocation failure, bad return code)."""


class ModelLoadError(BackendError):
    """The backend could not load the model."""


class InsufficientMemoryError(ModelLoadError):
    """The model cannot fit the memory it may use on some device, even with every idle model unloaded
    (or a memory estimate said so before anything was loaded)."""


class RunnerStoppedError(BackendError):
    """The runner process that hosted the model died while serving the request."""


class BackendUnavailableError(CorralError):
    """The requested backend cannot be used here; the message lists every candidate and why."""


class InsufficientStorageError(CorralError):
    """Not enough free disk space for what was asked (pull, create, blob upload)."""


class RegistryError(CorralError):
    """The registry answered in a way the pull/push protocol does not allow."""


class RegistryUnreachableError(RegistryError):
    """No connection to the registry could be opened at all (no route, name resolution, refused):
    reported at once, never retried, unlike errors in the middle of a transfer."""


class GenerationCancelledError(CorralError):
    """Generation stopped because the client went away or the server is shutting down."""


# ---- client side (the CLI) -----------------------------------------------------------------------
class ServerUnavailableError(CorralError):
    """The CLI could not reach a corral server at CORRAL_HOST, nor start one; the message says why."""
