"""Errors the server answers with, each carrying a transport-free :class:`Code`.

Every error a request can cause is a :class:`ServingError`. Its ``code`` is ours, not a
transport's: each transport maps it once, with one table -- :data:`HTTP_STATUS` below for
HTTP/REST, ``server.service.GRPC_STATUS`` for gRPC -- so the same situation gets the same
answer whichever way the request came. Anything else that escapes is a bug: it is logged
with its traceback and answered INTERNAL without details. Messages are built from the
fields, so they always name what was wrong.

::

    ServingError(message, code)
    ├── ModelNotFound(name, version)   NOT_FOUND           no such model or version
    ├── InvalidRequest(reason)         INVALID_ARGUMENT    the request as a whole is malformed
    ├── InvalidInput(name, reason)     INVALID_ARGUMENT    one input: datatype, shape, values
    ├── LoadFailed(name, reason)       INVALID_ARGUMENT    a load a user asked for failed
    ├── ModelNotReady(name, reason)    UNAVAILABLE         the model cannot serve now
    ├── ModelShuttingDown(name)        UNAVAILABLE         the model is being closed
    ├── Unavailable(reason)            UNAVAILABLE         the server cannot serve (draining)
    ├── QueueFull(name, limit)         RESOURCE_EXHAUSTED  too many requests wait for a model
    ├── TooManyRows(rows, limit)       RESOURCE_EXHAUSTED  more rows than --max-rows
    ├── DeadlineExceeded(name)         DEADLINE_EXCEEDED   the deadline passed while queued
    ├── Unauthenticated(reason)        UNAUTHENTICATED     missing or wrong credentials
    ├── PermissionDenied(reason)       PERMISSION_DENIED   not allowed on this server
    └── InvalidOutput(name, reason)    INTERNAL            an output the protocol cannot carry

Code                 HTTP  gRPC
INVALID_ARGUMENT     400   INVALID_ARGUMENT
NOT_FOUND            404   NOT_FOUND
UNAVAILABLE          503   UNAVAILABLE
RESOURCE_EXHAUSTED   429   RESOURCE_EXHAUSTED
DEADLINE_EXCEEDED    504   DEADLINE_EXCEEDED
UNAUTHENTICATED      401   UNAUTHENTICATED
PERMISSION_DENIED    403   PERMISSION_DENIED
INTERNAL             500   INTERNAL
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

__all__ = [
    "HTTP_STATUS",
    "Code",
    "DeadlineExceeded",
    "InvalidInput",
    "InvalidOutput",
    "InvalidRequest",
    "LoadFailed",
    "ModelNotFound",
    "ModelNotReady",
    "ModelShuttingDown",
    "PermissionDenied",
    "QueueFull",
    "ServingError",
    "TooManyRows",
    "Unauthenticated",
    "Unavailable",
]


class Code(enum.Enum):
    """What kind of failure an error is; named as gRPC names its statuses.

    The names double as the ``status`` label of the request metrics.
    """

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


#: The HTTP status of every code (KServe v2 REST, as Triton answers).
HTTP_STATUS: Final[dict[Code, int]] = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.UNAVAILABLE: 503,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.DEADLINE_EXCEEDED: 504,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.INTERNAL: 500,
}

MAX_MESSAGE = 1000  # characters


class ServingError(Exception):
    """An error answered to the client with ``code`` and ``message``."""

    def __init__(self, message: str, code: Code) -> None:
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
        super().__init__(message, Code.NOT_FOUND)


class InvalidRequest(ServingError):
    """The request as a whole is malformed (not one input: e.g. raw contents count)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid request: {reason}", Code.INVALID_ARGUMENT)


class InvalidInput(ServingError):
    """Input tensor ``name`` is wrong: its datatype, shape, byte size or values."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"input '{name}': {reason}", Code.INVALID_ARGUMENT)


class LoadFailed(ServingError):
    """Model ``name`` did not load when a user asked (the reason is also in the index)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"model '{name}' failed to load: {reason}", Code.INVALID_ARGUMENT)


class ModelNotReady(ServingError):
    """Model ``name`` exists but cannot serve now (loading, failed to load, unloading)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"model '{name}' is not ready: {reason}", Code.UNAVAILABLE)


class ModelShuttingDown(ServingError):
    """Model ``name`` is being closed (reloaded or unloaded) and takes no new requests."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"model '{name}' is shutting down", Code.UNAVAILABLE)


class Unavailable(ServingError):
    """The server cannot serve now, e.g. it is shutting down."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"server unavailable: {reason}", Code.UNAVAILABLE)


class QueueFull(ServingError):
    """Model ``name`` already has ``limit`` requests waiting; the client should retry later."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        super().__init__(
            f"model '{name}': request queue is full ({limit} requests waiting); retry later",
            Code.RESOURCE_EXHAUSTED,
        )


class TooManyRows(ServingError):
    """A request holds ``rows`` rows, more than the server takes in one (``--max-rows``)."""

    def __init__(self, rows: int, limit: int) -> None:
        self.rows = rows
        self.limit = limit
        super().__init__(
            f"a request may hold at most {limit} rows, this one holds {rows} (--max-rows)",
            Code.RESOURCE_EXHAUSTED,
        )


class DeadlineExceeded(ServingError):
    """The caller's deadline passed while its request waited in model ``name``'s queue."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"deadline exceeded while queued for model '{name}'", Code.DEADLINE_EXCEEDED
        )


class Unauthenticated(ServingError):
    """The request carries no credentials, or wrong ones."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"unauthenticated: {reason}", Code.UNAUTHENTICATED)


class PermissionDenied(ServingError):
    """The caller is known but may not do this on this server (e.g. model control is off)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason, Code.PERMISSION_DENIED)


class InvalidOutput(ServingError):
    """Output tensor ``name`` cannot be sent (e.g. a dtype the protocol has no datatype for).

    The client did nothing wrong, hence INTERNAL; the message still says what happened.
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"output '{name}': {reason}", Code.INTERNAL)
