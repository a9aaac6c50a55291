"""What the client raises when a call fails: one tree, each error carrying its status code.

Every failed call raises an :class:`InferenceServerError`; its ``code`` is the gRPC status
name (``"NOT_FOUND"``) and its ``message`` the server's explanation. The statuses the
protocol gives a meaning have a class of their own; any other status (``INTERNAL``,
``UNIMPLEMENTED``, ...) is the base class with that code. No gRPC exception reaches the
caller. Arrays the protocol cannot carry (a complex dtype, a BYTES element that is neither
``bytes`` nor ``str``) raise ``ValueError`` before anything is sent.

::

    InferenceServerError(code, message)   any status but OK
    ├── ModelNotFound                     NOT_FOUND           no such model or version
    ├── InvalidInput                      INVALID_ARGUMENT    input, parameter or config refused
    ├── Unavailable                       UNAVAILABLE         not ready, draining, unreachable
    ├── ResourceExhausted                 RESOURCE_EXHAUSTED  queue full, message too large
    ├── Unauthenticated                   UNAUTHENTICATED     no token, or a wrong one
    ├── PermissionDenied                  PERMISSION_DENIED   the token may not do this
    ├── DeadlineExceeded                  DEADLINE_EXCEEDED   no answer within the timeout
    └── InvalidResponse(reason, output)   INTERNAL            an answer the client cannot decode
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "DeadlineExceeded",
    "InferenceServerError",
    "InvalidInput",
    "InvalidResponse",
    "ModelNotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_for",
]


class InferenceServerError(Exception):
    """A call that failed with status ``code`` (e.g. ``"NOT_FOUND"``) and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class _Status(InferenceServerError):
    """An error of one fixed status: constructed from the message alone."""

    CODE: ClassVar[str]

    def __init__(self, message: str) -> None:
        super().__init__(self.CODE, message)
        self.args = (message,)  # as constructed, so that copies and pickles work


class ModelNotFound(_Status):
    """NOT_FOUND: the server has no such model, or no such version of it."""

    CODE = "NOT_FOUND"


class InvalidInput(_Status):
    """INVALID_ARGUMENT: an input (name, datatype, shape, size, values) or parameter refused."""

    CODE = "INVALID_ARGUMENT"


class Unavailable(_Status):
    """UNAVAILABLE: the model is not ready, the server is draining, or it cannot be reached."""

    CODE = "UNAVAILABLE"


class ResourceExhausted(_Status):
    """RESOURCE_EXHAUSTED: the model's queue is full or a message is too large; retry later."""

    CODE = "RESOURCE_EXHAUSTED"


class Unauthenticated(_Status):
    """UNAUTHENTICATED: the call carried no token, or a wrong one."""

    CODE = "UNAUTHENTICATED"


class PermissionDenied(_Status):
    """PERMISSION_DENIED: the call's credentials may not do this (e.g. load without admin)."""

    CODE = "PERMISSION_DENIED"


class DeadlineExceeded(_Status):
    """DEADLINE_EXCEEDED: no answer came within the call's timeout."""

    CODE = "DEADLINE_EXCEEDED"


class InvalidResponse(InferenceServerError):
    """The server's answer cannot be decoded: ``output`` names the tensor when one is at fault."""

    def __init__(self, reason: str, output: str | None = None) -> None:
        self.reason = reason
        self.output = output
        where = f"output '{output}'" if output is not None else "invalid response"
        super().__init__("INTERNAL", f"{where}: {reason}")
        self.args = (reason, output)


_BY_CODE: dict[str, type[_Status]] = {
    error.CODE: error
    for error in (
        ModelNotFound,
        InvalidInput,
        Unavailable,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        DeadlineExceeded,
    )
}


def error_for(code: str, message: str) -> InferenceServerError:
    """The error for status ``code`` (a gRPC status name): its own class when it has one."""
    kind = _BY_CODE.get(code)
    return kind(message) if kind is not None else InferenceServerError(code, message)
