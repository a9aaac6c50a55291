"""server.convert: every datatype round-trips, typed and raw; every bad input is refused.

Round trips go array -> output tensor (+ raw bytes) -> serialized request -> array, the
way data crosses the wire between our client and server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grpc
import hypothesis.extra.numpy as hnp
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.server import convert
from onnxforge.server.convert import DATATYPES, MAX_ELEMENTS, Datatype, InputTensor, OutputTensor
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

PROTOCOL_DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
ROWS = {row.name: row for row in DATATYPES}
SHAPES = [(2, 3), (0, 4), (), (5,), (1, 2, 1, 3)]


def sample(row: Datatype, shape: Sequence[int]) -> np.ndarray:
    """Values of ``row``'s datatype that probe its edges: extremes, zero, inf, nan, -0.0."""
    count = math.prod(shape)
    if row.name == "BYTES":
        pool: list[bytes] = [b"", b"a", b"\x00\xff\x00", "é✓".encode(), b"x" * 300]
        array = np.empty(count, dtype=object)
        array[:] = [pool[i % len(pool)] for i in range(count)]
        return array.reshape(shape)
    if row.name == "BOOL":
        return (np.arange(count) % 3 == 0).reshape(shape)
    if row.dtype.kind in "iu":
        info = np.iinfo(row.dtype)
        base = np.array([info.min, info.max, 0, 1, info.max // 3], dtype=row.dtype)
    else:
        finfo = np.finfo(row.dtype)
        values = [0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, finfo.max, finfo.tiny]
        base = np.array(values, dtype=row.dtype)
    return np.resize(base, count).reshape(shape)


def as_input(tensor: OutputTensor) -> InputTensor:
    return InputTensor(
        name=tensor.name, datatype=tensor.datatype, shape=tensor.shape, contents=tensor.contents
    )


def assert_same(decoded: np.ndarray, original: np.ndarray, row: Datatype, raw: bool) -> None:
    assert decoded.shape == original.shape
    if row.name == "BYTES":
        expected = [v.encode() if isinstance(v, str) else bytes(v) for v in original.ravel()]
        assert decoded.dtype == object
        assert decoded.ravel().tolist() == expected
        return
    assert decoded.dtype == row.dtype
    wanted = np.ascontiguousarray(original, dtype=row.dtype)
    if raw:  # bit for bit: every NaN payload and -0.0 survive
        assert decoded.tobytes() == wanted.tobytes()
    else:  # typed floats pass through Python floats: a signalling NaN may come back quiet
        np.testing.assert_array_equal(decoded, wanted)
        if row.dtype.kind == "f":
            np.testing.assert_array_equal(np.signbit(decoded), np.signbit(wanted))


def request_of(tensor: InputTensor, raw: bytes | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", inputs=[tensor])
    if raw is not None:
        request.raw_input_contents.append(raw)
    return pb.ModelInferRequest.FromString(request.SerializeToString())


def tensor(datatype: str, shape: Sequence[int], name: str = "x", **contents: Any) -> InputTensor:
    return InputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


# ------------------------------------------------------------------ the table


def test_table_has_every_protocol_datatype_once() -> None:
    assert [row.name for row in DATATYPES] == PROTOCOL_DATATYPES


@pytest.mark.parametrize("row", DATATYPES, ids=lambda row: row.name)
def test_numpy_dtypes_are_explicitly_little_endian(row: Datatype) -> None:
    if row.name == "BYTES":
        assert row.dtype == np.dtype(object)
    else:
        assert row.dtype.byteorder in "<|=" and row.dtype == row.dtype.newbyteorder("<")
        assert row.dtype.str[0] in "<|"


@pytest.mark.parametrize("row", DATATYPES, ids=lambda row: row.name)
def test_onnx_types_agree_with_onnx(row: Datatype) -> None:
    onnx_dtype = onnx.helper.tensor_dtype_to_np_dtype(row.onnx_type)
    if row.name == "BYTES":
        assert onnx_dtype == np.dtype(object)
    else:
        assert onnx_dtype.newbyteorder("<") == row.dtype


@pytest.mark.parametrize(
    ("datatype", "field"),
    [
        ("BOOL", "bool_contents"),
        ("UINT8", "uint_contents"),
        ("UINT16", "uint_contents"),
        ("UINT32", "uint_contents"),
        ("UINT64", "uint64_contents"),
        ("INT8", "int_contents"),
        ("INT16", "int_contents"),
        ("INT32", "int_contents"),
        ("INT64", "int64_contents"),
        ("FP16", None),
        ("FP32", "fp32_contents"),
        ("FP64", "fp64_contents"),
        ("BYTES", "bytes_contents"),
    ],
)
def test_contents_field_per_datatype(datatype: str, field: str | None) -> None:
    assert ROWS[datatype].field == field


@pytest.mark.parametrize("row", DATATYPES, ids=lambda row: row.name)
def test_lookups_find_each_row(row: Datatype) -> None:
    assert convert.datatype(row.name) is row
    assert convert.from_onnx(row.onnx_type) is row
    assert convert.from_ort(row.ort_type) is row
    assert convert.from_numpy(row.dtype) is row


def test_lookups_of_unsupported_types() -> None:
    assert convert.datatype("BF16") is None
    assert convert.from_onnx(onnx.TensorProto.BFLOAT16) is None
    assert convert.from_ort("tensor(bfloat16)") is None
    assert convert.from_numpy(np.complex64) is None
    assert convert.from_numpy(">f8") is ROWS["FP64"]
    assert convert.from_numpy("S5") is ROWS["BYTES"]
    assert convert.from_numpy("U3") is ROWS["BYTES"]


# ------------------------------------------------------------- round trips


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("row", DATATYPES, ids=lambda row: row.name)
def test_round_trip(row: Datatype, raw: bool, shape: tuple[int, ...]) -> None:
    original = sample(row, shape)
    if row.field is None and not raw:
        with pytest.raises(InvalidOutput, match=f"output 'y': {row.name} has no typed contents"):
            convert.output_tensor("y", original, raw=False)
        return
    out, data = convert.output_tensor("y", original, raw=raw)
    assert (out.name, out.datatype, list(out.shape)) == ("y", row.name, list(shape))
    assert (data is not None) is raw
    if raw:
        assert not out.contents.ListFields()
    decoded = convert.input_arrays(request_of(as_input(out), data))["y"]
    assert_same(decoded, original, row, raw)


@pytest.mark.parametrize(
    "row",
    [r for r in DATATYPES if r.dtype.itemsize > 1 and r.name != "BYTES"],
    ids=lambda r: r.name,
)
def test_big_endian_arrays_are_written_little_endian(row: Datatype) -> None:
    little = sample(row, (3, 4))
    big = little.astype(row.dtype.newbyteorder(">"))
    assert big.tobytes() != little.tobytes()  # the test means something
    _, data = convert.output_tensor("y", big, raw=True)
    assert data == little.tobytes()
    if row.field is not None:
        out, _ = convert.output_tensor("y", big, raw=False)
        assert_same(convert.input_array(as_input(out), None), little, row, raw=False)


def test_signalling_nan_is_bit_exact_raw_and_still_nan_typed() -> None:
    snan = np.frombuffer(b"\x01\x00\x80\x7f", dtype="<f4")  # 0x7f800001
    _, data = convert.output_tensor("y", snan, raw=True)
    assert data == snan.tobytes()
    out, _ = convert.output_tensor("y", snan, raw=False)
    assert np.isnan(convert.input_array(as_input(out), None)).all()


def test_non_contiguous_arrays_are_written_row_major() -> None:
    array = np.arange(12, dtype="<i4").reshape(3, 4).T
    out, data = convert.output_tensor("y", array, raw=True)
    assert list(out.shape) == [4, 3]
    assert data == np.ascontiguousarray(array).tobytes()


def test_raw_input_is_a_read_only_view_of_the_request_bytes() -> None:
    raw = np.arange(8, dtype="<f4").tobytes()
    array = convert.input_array(tensor("FP32", [2, 4]), raw)
    assert np.shares_memory(array, np.frombuffer(raw, dtype=np.uint8))
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is raw
    assert not array.flags.writeable
    np.testing.assert_array_equal(array, np.arange(8, dtype=np.float32).reshape(2, 4))


def test_empty_batch_decodes_raw_and_typed() -> None:
    for raw in (b"", None):
        array = convert.input_array(tensor("FP16", [0, 4]), raw)
        assert array.shape == (0, 4) and array.dtype == np.dtype("<f2")
        array = convert.input_array(tensor("INT64", [0, 4]), raw)
        assert array.shape == (0, 4) and array.dtype == np.dtype("<i8")


def test_bytes_output_encodes_str_as_utf8_with_length_prefixes() -> None:
    out, data = convert.output_tensor("y", np.array(["é", "ab"], dtype=object), raw=True)
    assert out.datatype == "BYTES"
    assert data == b"\x02\x00\x00\x00\xc3\xa9" + b"\x02\x00\x00\x00ab"
    out, _ = convert.output_tensor("y", np.array(["é", "ab"]), raw=False)
    assert list(out.contents.bytes_contents) == ["é".encode(), b"ab"]


def test_whole_request_with_several_inputs() -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([[1, -2]], dtype="<i8")
    out_a, raw_a = convert.output_tensor("a", a, raw=True)
    out_b, raw_b = convert.output_tensor("b", b, raw=True)
    request = pb.ModelInferRequest(
        inputs=[as_input(out_a), as_input(out_b)],
        raw_input_contents=[raw_a or b"", raw_b or b""],
    )
    arrays = convert.input_arrays(request)
    assert list(arrays) == ["a", "b"]
    np.testing.assert_array_equal(arrays["a"], a)
    np.testing.assert_array_equal(arrays["b"], b)


def test_output_tensors_are_typed_unless_raw_is_asked_for() -> None:
    tensors, raw = convert.output_tensors({"p": np.ones((2, 2), "<f4")}, raw=False)
    assert raw == [] and list(tensors[0].contents.fp32_contents) == [1.0] * 4
    tensors, raw = convert.output_tensors({"p": np.ones((2, 2), "<f4")}, raw=True)
    assert raw == [np.ones(4, "<f4").tobytes()] and not tensors[0].contents.ListFields()


def test_one_fp16_output_makes_the_whole_response_raw() -> None:
    outputs = {"half": np.ones(3, "<f2"), "idx": np.arange(3, dtype="<i8")}
    tensors, raw = convert.output_tensors(outputs, raw=False)
    assert [t.name for t in tensors] == ["half", "idx"]
    assert raw == [np.ones(3, "<f2").tobytes(), np.arange(3, dtype="<i8").tobytes()]
    assert not any(t.contents.ListFields() for t in tensors)


# -------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("datatype", "shape", "size", "expected"),
    [
        ("FP32", [2, 2], 15, 16),
        ("FP32", [2, 2], 17, 16),
        ("INT64", [3], 12, 24),
        ("FP16", [1, 3], 0, 6),
        ("BOOL", [4], 5, 4),
        ("UINT8", [0, 4], 1, 0),
    ],
)
def test_raw_byte_length_mismatch(
    datatype: str, shape: list[int], size: int, expected: int
) -> None:
    with pytest.raises(
        InvalidInput, match=rf"input 'x': .* {size} bytes, .* needs {expected} bytes"
    ):
        convert.input_array(tensor(datatype, shape), b"\x00" * size)


@pytest.mark.parametrize(
    ("datatype", "values", "shape"),
    [
        ("FP32", {"fp32_contents": [1.0, 2.0, 3.0]}, [2, 2]),
        ("INT64", {"int64_contents": [1, 2, 3, 4, 5]}, [2, 2]),
        ("BYTES", {"bytes_contents": [b"a"]}, [2]),
        ("BOOL", {"bool_contents": [True]}, [0, 4]),
    ],
)
def test_typed_count_mismatch(datatype: str, values: dict[str, Any], shape: list[int]) -> None:
    received = len(next(iter(values.values())))
    needed = math.prod(shape)
    with pytest.raises(InvalidInput, match=rf"input 'x': .* {received} values, .* needs {needed}"):
        convert.input_array(tensor(datatype, shape, **values), None)


def test_no_data_at_all() -> None:
    with pytest.raises(
        InvalidInput, match=r"input 'x': no data, but shape \[2, 4\] needs 8 values"
    ):
        convert.input_array(tensor("FP32", [2, 4]), None)


@pytest.mark.parametrize(
    ("datatype", "values", "expected"),
    [
        ("FP32", {"int64_contents": [1, 2]}, "fp32_contents"),
        ("INT64", {"int_contents": [1, 2]}, "int64_contents"),
        ("INT8", {"fp32_contents": [1.0, 2.0]}, "int_contents"),
        ("UINT64", {"uint_contents": [1, 2]}, "uint64_contents"),
        ("BYTES", {"bool_contents": [True, False]}, "bytes_contents"),
    ],
)
def test_wrong_contents_field(datatype: str, values: dict[str, Any], expected: str) -> None:
    (got,) = values
    with pytest.raises(
        InvalidInput, match=rf"input 'x': datatype {datatype} takes .*contents\.{expected}, .*{got}"
    ):
        convert.input_array(tensor(datatype, [2], **values), None)


def test_fp16_sent_typed_is_refused_with_the_way_out() -> None:
    with pytest.raises(InvalidInput, match="input 'x': FP16 values must be sent in raw_input"):
        convert.input_array(tensor("FP16", [2], fp32_contents=[1.0, 2.0]), None)


def test_raw_and_typed_together() -> None:
    with pytest.raises(InvalidInput, match="input 'x': has both typed contents and raw"):
        convert.input_array(tensor("FP32", [1], fp32_contents=[1.0]), b"\x00" * 4)


def test_unknown_datatype_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': unknown datatype 'FP8' \(known: BOOL, "):
        convert.input_array(tensor("FP8", [1]), b"\x00")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([-1, 4], r"shape \[-1, 4\] has a negative dimension -1 at index 0"),
        ([2, -3], r"negative dimension -3 at index 1"),
        (
            [2**40, 2**40],
            rf"shape \[{2**40}, {2**40}\] has {2**80} elements; at most {MAX_ELEMENTS}",
        ),
        ([2**31, 1], rf"has {2**31} elements; at most {MAX_ELEMENTS}"),
        ([0, 2**40], rf"dimension {2**40} at index 1; no dimension can exceed {MAX_ELEMENTS}"),
        ([1] * 33, "shape has 33 dimensions; at most 32"),
    ],
)
@pytest.mark.parametrize("raw", [b"", None], ids=["raw", "typed"])
def test_bad_shapes(shape: list[int], message: str, raw: bytes | None) -> None:
    with pytest.raises(InvalidInput, match=rf"input 'x': .*{message}"):
        convert.input_array(tensor("FP32", shape), raw)


@pytest.mark.parametrize(
    ("datatype", "values", "message"),
    [
        (
            "INT8",
            {"int_contents": [1, 300]},
            r"value 300 at index 1 is out of range for INT8 \(-128..127\)",
        ),
        ("INT16", {"int_contents": [-40000, 0]}, r"value -40000 at index 0 .* INT16"),
        ("UINT8", {"uint_contents": [0, 256]}, r"value 256 at index 1 .* UINT8 \(0..255\)"),
        ("UINT16", {"uint_contents": [70000, 0]}, r"value 70000 .* UINT16"),
    ],
)
def test_typed_values_out_of_range(datatype: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=rf"input 'x': contents\.\w+ {message}"):
        convert.input_array(tensor(datatype, [2], **values), None)


def test_raw_bool_bytes_must_be_zero_or_one() -> None:
    with pytest.raises(InvalidInput, match="input 'x': raw BOOL element 2 is byte 7"):
        convert.input_array(tensor("BOOL", [4]), b"\x00\x01\x07\x00")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00\x00\x00a", r"hold 5 bytes, but shape \[2\] needs at least 8 bytes"),
        (b"\x09\x00\x00\x00ab\x00\x00", r"element 0 declares 9 bytes, but only 4 bytes remain"),
        (b"\x01\x00\x00\x00a\x01\x00\x00", r"end at byte 8, inside the length prefix of element 1"),
        (
            b"\x00\x00\x00\x00\x01\x00\x00\x00ab",
            r"hold 10 bytes, but the 2 elements .* end at byte 9",
        ),
    ],
)
def test_malformed_raw_bytes(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=rf"input 'x': raw BYTES .*{message}"):
        convert.input_array(tensor("BYTES", [2]), raw)


def test_raw_contents_count_must_match_inputs() -> None:
    request = pb.ModelInferRequest(
        inputs=[tensor("FP32", [1], name="a"), tensor("FP32", [1], name="b")],
        raw_input_contents=[b"\x00" * 4],
    )
    with pytest.raises(
        InvalidRequest, match="raw_input_contents has 1 entries but the request has 2"
    ):
        convert.input_arrays(request)


def test_duplicate_input_names() -> None:
    request = pb.ModelInferRequest(
        inputs=[tensor("FP32", [1], fp32_contents=[1.0]), tensor("FP32", [1], fp32_contents=[2.0])]
    )
    with pytest.raises(InvalidInput, match="input 'x': appears more than once"):
        convert.input_arrays(request)


# ------------------------------------------------------------- bad outputs


def test_output_dtype_without_protocol_datatype() -> None:
    with pytest.raises(InvalidOutput, match=r"output 'y': NumPy dtype complex64 has no protocol"):
        convert.output_tensor("y", np.zeros(2, np.complex64), raw=True)


def test_bytes_output_elements_must_be_bytes_or_str() -> None:
    with pytest.raises(InvalidOutput, match="output 'y': BYTES element 1 is a int"):
        convert.output_tensor("y", np.array([b"a", 3], dtype=object), raw=True)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (ModelNotFound("mlp"), grpc.StatusCode.NOT_FOUND, "model 'mlp' not found"),
        (
            ModelNotFound("mlp", "3", ["1", "2"]),
            grpc.StatusCode.NOT_FOUND,
            "model 'mlp' version '3' not found (available versions: 1, 2)",
        ),
        (InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT, "invalid request: bad"),
        (InvalidInput("x", "bad"), grpc.StatusCode.INVALID_ARGUMENT, "input 'x': bad"),
        (
            ModelNotReady("mlp", "loading"),
            grpc.StatusCode.UNAVAILABLE,
            "model 'mlp' is not ready: loading",
        ),
        (Unavailable("draining"), grpc.StatusCode.UNAVAILABLE, "server unavailable: draining"),
        (
            QueueFull("mlp", 64),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "model 'mlp': request queue is full (64 requests waiting); retry later",
        ),
        (Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED, "unauthenticated: no token"),
        (InvalidOutput("y", "bad"), grpc.StatusCode.INTERNAL, "output 'y': bad"),
    ],
)
def test_errors_carry_status_code_and_message(
    error: ServingError, code: grpc.StatusCode, message: str
) -> None:
    assert isinstance(error, ServingError)
    assert error.code == code
    assert error.message == message == str(error)


# --------------------------------------------------------------- property


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    row = draw(st.sampled_from(DATATYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    if row.name == "BYTES":
        return draw(hnp.arrays(object, shape, elements=st.binary(max_size=6)))
    dtype = row.dtype
    if dtype.itemsize > 1 and draw(st.booleans()):
        dtype = dtype.newbyteorder(">")
    return draw(hnp.arrays(dtype, shape))


@settings(max_examples=300, deadline=None)
@given(original=arrays(), raw=st.booleans())
def test_property_round_trip_through_the_wire(original: np.ndarray, raw: bool) -> None:
    row = convert.from_numpy(original.dtype)
    assert row is not None
    tensors, contents = convert.output_tensors({"t": original}, raw=raw)
    response = pb.ModelInferResponse.FromString(
        pb.ModelInferResponse(outputs=tensors, raw_output_contents=contents).SerializeToString()
    )
    request = pb.ModelInferRequest(
        inputs=[as_input(t) for t in response.outputs],
        raw_input_contents=response.raw_output_contents,
    )
    decoded = convert.input_arrays(request)["t"]
    assert_same(decoded, original, row, raw or row.field is None)
