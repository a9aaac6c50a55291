"""server.convert: the codec's errors become the server's, with the status each one needs.

The codec itself (every datatype both ways, every malformation) is tested in
tests/client/test_tensors.py; here, what the server makes of it: a bad input is
INVALID_ARGUMENT naming the input, a malformed request INVALID_ARGUMENT, an output the
protocol cannot carry INTERNAL naming the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from onnxforge.protocol import datatypes
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.server import convert
from onnxforge.server.convert import InputTensor
from onnxforge.server.errors import (
    InvalidInput,
    InvalidOutput,
    InvalidRequest,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    ServingError,
    Unauthenticated,
    Unavailable,
)


def tensor(datatype: str, shape: Sequence[int], name: str = "x", **contents: Any) -> InputTensor:
    return InputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


def test_the_table_and_its_lookups_are_the_shared_ones() -> None:
    assert convert.DATATYPES is datatypes.DATATYPES
    assert convert.Datatype is datatypes.Datatype
    row = convert.datatype("FP32")
    assert row is not None and row is datatypes.datatype("FP32")
    assert convert.from_onnx(row.onnx_type) is convert.from_ort(row.ort_type) is row
    assert convert.from_numpy(np.float32) is row


def test_a_request_round_trips_into_arrays() -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([[1, -2]], dtype="<i8")
    out_a, raw_a = convert.output_tensor("a", a, raw=True)
    out_b, raw_b = convert.output_tensor("b", b, raw=True)
    request = pb.ModelInferRequest(
        inputs=[tensor(out_a.datatype, out_a.shape, "a"), tensor(out_b.datatype, out_b.shape, "b")],
        raw_input_contents=[raw_a or b"", raw_b or b""],
    )
    arrays = convert.input_arrays(request)
    assert list(arrays) == ["a", "b"]
    np.testing.assert_array_equal(arrays["a"], a)
    np.testing.assert_array_equal(arrays["b"], b)
    typed = convert.input_array(tensor("INT32", [2], int_contents=[3, -4]), None)
    assert typed.dtype == np.dtype("<i4") and typed.tolist() == [3, -4]


def test_outputs_are_typed_unless_raw_or_fp16() -> None:
    tensors, raw = convert.output_tensors({"p": np.ones((2, 2), "<f4")}, raw=False)
    assert raw == [] and list(tensors[0].contents.fp32_contents) == [1.0] * 4
    tensors, raw = convert.output_tensors({"p": np.ones(2, "<f4"), "h": np.ones(2, "<f2")}, False)
    assert len(raw) == 2 and not any(t.contents.ListFields() for t in tensors)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: convert.input_array(tensor("FP32", [2, 2]), b"\x00" * 15),
            r"input 'x': raw contents hold 15 bytes, but shape \[2, 2\] of FP32 needs 16 bytes",
        ),
        (
            lambda: convert.input_array(tensor("FP16", [2], fp32_contents=[1.0, 2.0]), None),
            "input 'x': FP16 values must be sent in raw_input_contents",
        ),
        (
            lambda: convert.input_array(tensor("FP8", [1]), b"\x00"),
            r"input 'x': unknown datatype 'FP8' \(known: BOOL, ",
        ),
        (
            lambda: convert.input_arrays(
                pb.ModelInferRequest(
                    inputs=[
                        tensor("FP32", [1], fp32_contents=[1.0]),
                        tensor("FP32", [1], fp32_contents=[2.0]),
                    ]
                )
            ),
            "input 'x': appears more than once in the request",
        ),
        (
            lambda: convert.check_shape("x", [-1, 4]),
            r"input 'x': shape \[-1, 4\] has a negative dimension -1 at index 0; "
            "dimensions of a request must be >= 0",
        ),
    ],
)
def test_a_bad_input_is_invalid_input(call: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{message}") as error:
        call()
    assert error.value.name == "x" and error.value.code.name == "INVALID_ARGUMENT"


def test_a_raw_contents_count_that_does_not_match_is_an_invalid_request() -> None:
    request = pb.ModelInferRequest(
        inputs=[tensor("FP32", [1], name="a"), tensor("FP32", [1], name="b")],
        raw_input_contents=[b"\x00" * 4],
    )
    with pytest.raises(
        InvalidRequest,
        match=r"^invalid request: raw_input_contents has 1 entries but the request has 2 inputs",
    ) as error:
        convert.input_arrays(request)
    assert error.value.code.name == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(2, np.complex64), "output 'y': NumPy dtype complex64 has no protocol"),
        (np.array([b"a", 3], dtype=object), "output 'y': BYTES element 1 is a int"),
    ],
)
def test_an_output_the_protocol_cannot_carry_is_invalid_output(
    array: np.ndarray, message: str
) -> None:
    with pytest.raises(InvalidOutput, match=f"^{message}") as error:
        convert.output_tensor("y", array, raw=True)
    assert error.value.name == "y" and error.value.code.name == "INTERNAL"
    with pytest.raises(InvalidOutput, match=f"^{message}"):
        convert.output_tensors({"y": array}, raw=False)


def test_fp16_cannot_be_sent_typed() -> None:
    with pytest.raises(InvalidOutput, match="output 'y': FP16 has no typed contents field"):
        convert.output_tensor("y", np.ones(2, "<f2"), raw=False)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (ModelNotFound("mlp"), "NOT_FOUND", "model 'mlp' not found"),
        (
            ModelNotFound("mlp", "3", ["1", "2"]),
            "NOT_FOUND",
            "model 'mlp' version '3' not found (available versions: 1, 2)",
        ),
        (InvalidRequest("bad"), "INVALID_ARGUMENT", "invalid request: bad"),
        (InvalidInput("x", "bad"), "INVALID_ARGUMENT", "input 'x': bad"),
        (ModelNotReady("mlp", "loading"), "UNAVAILABLE", "model 'mlp' is not ready: loading"),
        (Unavailable("draining"), "UNAVAILABLE", "server unavailable: draining"),
        (
            QueueFull("mlp", 64),
            "RESOURCE_EXHAUSTED",
            "model 'mlp': request queue is full (64 requests waiting); retry later",
        ),
        (Unauthenticated("no token"), "UNAUTHENTICATED", "unauthenticated: no token"),
        (InvalidOutput("y", "bad"), "INTERNAL", "output 'y': bad"),
    ],
)
def test_errors_carry_status_code_and_message(error: ServingError, code: str, message: str) -> None:
    assert isinstance(error, ServingError)
    assert error.code.name == code
    assert error.message == message == str(error)
