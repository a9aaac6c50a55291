"""The error tree: codes, messages, and the one table per transport that maps the codes."""

from __future__ import annotations

import grpc
import pytest

from onnxforge.server import errors
from onnxforge.server.errors import (
    HTTP_STATUS,
    Code,
    DeadlineExceeded,
    LoadFailed,
    ModelShuttingDown,
    PermissionDenied,
    ServingError,
    TooManyRows,
)
from onnxforge.server.service import GRPC_STATUS


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            TooManyRows(70000, 65536),
            Code.RESOURCE_EXHAUSTED,
            "a request may hold at most 65536 rows, this one holds 70000 (--max-rows)",
        ),
        (
            DeadlineExceeded("mlp"),
            Code.DEADLINE_EXCEEDED,
            "deadline exceeded while queued for model 'mlp'",
        ),
        (
            LoadFailed("mlp", "no file"),
            Code.INVALID_ARGUMENT,
            "model 'mlp' failed to load: no file",
        ),
        (ModelShuttingDown("mlp"), Code.UNAVAILABLE, "model 'mlp' is shutting down"),
        (PermissionDenied("model control is off"), Code.PERMISSION_DENIED, "model control is off"),
    ],
)
def test_errors_carry_their_code_and_a_message_built_from_their_fields(
    error: ServingError, code: Code, message: str
) -> None:
    assert error.code == code
    assert error.message == message == str(error)


def test_every_code_has_one_grpc_and_one_http_status() -> None:
    assert set(GRPC_STATUS) == set(Code) == set(HTTP_STATUS)
    for code in Code:
        assert GRPC_STATUS[code] == getattr(grpc.StatusCode, code.name)
    assert len(set(GRPC_STATUS.values())) == len(Code)
    assert HTTP_STATUS == {
        Code.INVALID_ARGUMENT: 400,
        Code.UNAUTHENTICATED: 401,
        Code.PERMISSION_DENIED: 403,
        Code.NOT_FOUND: 404,
        Code.RESOURCE_EXHAUSTED: 429,
        Code.INTERNAL: 500,
        Code.UNAVAILABLE: 503,
        Code.DEADLINE_EXCEEDED: 504,
    }


def test_the_drawn_tree_names_every_error_with_its_code() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, ServingError) and value is not ServingError
    ]
    assert sorted(cls.__name__ for cls in classes) == sorted(
        name for name in errors.__all__ if name not in ("Code", "HTTP_STATUS", "ServingError")
    )
    # "├── QueueFull(name, limit)    RESOURCE_EXHAUSTED  too many ..." -> QueueFull: RESOURCE_...
    drawn = {
        line.split("── ")[1].split("(")[0]: line.split(")")[1].split()[0]
        for line in (errors.__doc__ or "").splitlines()
        if "── " in line
    }
    assert set(drawn) == {cls.__name__ for cls in classes}
    fields: dict[str, tuple[object, ...]] = {
        "QueueFull": ("m", 1),
        "TooManyRows": (2, 1),
        "ModelNotFound": ("m",),
        "ModelShuttingDown": ("m",),
        "DeadlineExceeded": ("m",),
        "Unavailable": ("r",),
        "InvalidRequest": ("r",),
        "Unauthenticated": ("r",),
        "PermissionDenied": ("r",),
    }
    for cls in classes:
        made = cls(*fields.get(cls.__name__, ("m", "r")))
        assert made.code.name == drawn[cls.__name__], cls.__name__
