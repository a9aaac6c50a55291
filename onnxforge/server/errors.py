"""Errors the server answers with, each carrying its gRPC status code.

Every error a request can cause is a :class:`ServingError`; the servicer maps it to a
gRPC status in one place (``context.abort(error.code, error.message)``). Anything else
that escapes is a bug: it is logged with its traceback and answered INTERNAL without
details. Messages are built from the fields, so they always name what was wrong.

::

    ServingError(message, code)
    ├── ModelNotFound(name, version)   NOT_FOUND           no such model or version
    ├── InvalidRequest(reason)         INVALID_ARGUMENT    the request as a whole is malformed
    ├── InvalidInput(name, reason)     INVALID_ARGUMENT    one input: datatype, shape, size, values
    ├── ModelNotReady(name, reason)    UNAVAILABLE         the model exists but cannot serve now
    ├── Unavailable(reason)            UNAVAILABLE         the server cannot serve now (draining)
    ├── QueueFull(name, limit)         RESOURCE_EXHAUSTED  too many requests waiting for a model
    ├── Unauthenticated(reason)        UNAUTHENTICATED     missing or wrong credentials
    └── InvalidOutput(name, reason)    INTERNAL            a model output the protocol cannot carry
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

__all__ = [
    "InvalidInput",
    "InvalidOutput",
    "InvalidRequest",
    "ModelNotFound",
    "ModelNotReady",
    "QueueFull",
    "ServingError",
    "Unauthenticated",
    "Unavailable",
]


MAX_MESSAGE = 1000  # characters


class ServingError(Exception):
    """An error answered to the client with ``code`` and ``message``."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        # Names from a request end up in messages; a status message travels in a header,
        # and a client drops headers beyond 8-16 KiB, so keep every message short.
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class ModelNotFound(ServingError):
    """No model ``name`` (or no version ``version`` of it); lists what exists when known."""

    def __init__(self, name: str, version: str = "", available: Iterable[str] = ()) -> None:
        self.name = name
        self.version = version
        self.available = tuple(available)
        what = f"model '{name}' version '{version}'" if version else f"model '{name}'"
        message = f"{what} not found"
        if self.available:
            label = "versions" if version else "models"
            message += f" (available {label}: {', '.join(self.available)})"
        super().__init__(message, grpc.StatusCode.NOT_FOUND)


class InvalidRequest(ServingError):
    """The request as a whole is malformed (not one input: e.g. raw contents count)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid request: {reason}", grpc.StatusCode.INVALID_ARGUMENT)


class InvalidInput(ServingError):
    """Input tensor ``name`` is wrong: its datatype, shape, byte size or values."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"input '{name}': {reason}", grpc.StatusCode.INVALID_ARGUMENT)


class ModelNotReady(ServingError):
    """Model ``name`` exists but cannot serve now (loading, failed to load, unloading)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"model '{name}' is not ready: {reason}", grpc.StatusCode.UNAVAILABLE)


class Unavailable(ServingError):
    """The server cannot serve now, e.g. it is shutting down."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"server unavailable: {reason}", grpc.StatusCode.UNAVAILABLE)


class QueueFull(ServingError):
    """Model ``name`` already has ``limit`` requests waiting; the client should retry later."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        super().__init__(
            f"model '{name}': request queue is full ({limit} requests waiting); retry later",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )


class Unauthenticated(ServingError):
    """The request carries no credentials, or wrong ones."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"unauthenticated: {reason}", grpc.StatusCode.UNAUTHENTICATED)


class InvalidOutput(ServingError):
    """Output tensor ``name`` cannot be sent (e.g. a dtype the protocol has no datatype for).

    The client did nothing wrong, hence INTERNAL; the message still says what happened.
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"output '{name}': {reason}", grpc.StatusCode.INTERNAL)
