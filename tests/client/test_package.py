"""The client package's surface: what it exports, what it imports, its errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
import types

import pytest

import onnxforge.client
from onnxforge.client import errors
from onnxforge.client.errors import (
    DeadlineExceeded,
    InferenceServerError,
    InvalidInput,
    InvalidResponse,
    ModelNotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_for,
)

NOT_IMPORTED = ("onnx", "onnxruntime", "onnxforge.builder", "onnxforge.server")


def test_importing_the_client_and_the_codec_imports_no_onnx() -> None:
    script = (
        "import sys\n"
        "import onnxforge.client, onnxforge.protocol.tensors, onnxforge.protocol.datatypes\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    modules = found.stdout.split()
    assert "onnxforge.client" in modules and "onnxforge.protocol.tensors" in modules
    for package in NOT_IMPORTED:
        leaked = [m for m in modules if m == package or m.startswith(package + ".")]
        assert not leaked, f"importing the client imports {leaked}"


def test_the_codec_imports_neither_onnx_nor_grpc() -> None:
    script = (
        "import sys\n"
        "import onnxforge.protocol.tensors, onnxforge.protocol.datatypes\n"
        "import onnxforge.protocol.headers\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    modules = found.stdout.split()
    assert "onnxforge.protocol.tensors" in modules
    for package in (*NOT_IMPORTED, "grpc"):
        leaked = [m for m in modules if m == package or m.startswith(package + ".")]
        assert not leaked, f"importing the codec imports {leaked}"


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(onnxforge.client).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } - {"annotations"}
    assert set(onnxforge.client.__all__) == public
    assert all(hasattr(onnxforge.client, name) for name in onnxforge.client.__all__)
    assert set(errors.__all__) <= {*vars(errors)}


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("NOT_FOUND", ModelNotFound),
        ("INVALID_ARGUMENT", InvalidInput),
        ("UNAVAILABLE", Unavailable),
        ("RESOURCE_EXHAUSTED", ResourceExhausted),
        ("UNAUTHENTICATED", Unauthenticated),
        ("PERMISSION_DENIED", PermissionDenied),
        ("DEADLINE_EXCEEDED", DeadlineExceeded),
        ("INTERNAL", InferenceServerError),
        ("UNIMPLEMENTED", InferenceServerError),
    ],
)
def test_each_status_has_its_error(code: str, kind: type[InferenceServerError]) -> None:
    error = error_for(code, "what the server said")
    assert type(error) is kind and isinstance(error, InferenceServerError)
    assert (error.code, error.message) == (code, "what the server said")
    assert str(error) == f"{code}: what the server said"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.code, copy.message) == (kind, code, "what the server said")


def test_an_undecodable_answer_names_the_output() -> None:
    error = InvalidResponse("raw contents hold 3 bytes", "probabilities")
    assert error.code == "INTERNAL" and error.output == "probabilities"
    assert str(error) == "INTERNAL: output 'probabilities': raw contents hold 3 bytes"
    whole = pickle.loads(pickle.dumps(InvalidResponse("2 outputs, 1 raw entry")))
    assert whole.message == "invalid response: 2 outputs, 1 raw entry" and whole.output is None


def test_the_tree_is_drawn_in_the_docstring() -> None:
    assert errors.__doc__ is not None
    for name in errors.__all__:
        if name != "error_for":
            assert name in errors.__doc__, name
