"""The tensor codec both sides use: every datatype round-trips, typed and raw, both ways.

Requests go client -> wire -> server (the client encodes inputs, the server decodes them);
responses go server -> wire -> client (outputs). Every bad tensor is refused with an error
naming the tensor by its role -- ``input 'x'`` in a request, ``output 'x'`` in a response --
and the message's own field of raw contents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxforge.protocol.datatypes import DATATYPES, Datatype, from_numpy
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.tensors import (
    INPUTS,
    MAX_ELEMENTS,
    OUTPUTS,
    MessageError,
    Role,
    TensorError,
    decode_tensor,
    decode_tensors,
    encode_tensor,
    encode_tensors,
)

ROWS = {row.name: row for row in DATATYPES}
SHAPES = [(2, 3), (0, 4), (), (5,), (1, 2, 1, 3)]
ROLES = [INPUTS, OUTPUTS]


def role_id(role: Role[Any]) -> str:
    return f"{role.tensor}s"


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


def through_the_wire(
    role: Role[Any], arrays: dict[str, np.ndarray], raw: bool
) -> dict[str, np.ndarray]:
    """Encode as the sending side does, serialize, parse, decode as the receiving side does."""
    tensors, contents = encode_tensors(role, arrays, raw)
    if role is INPUTS:
        request = pb.ModelInferRequest(model_name="m", inputs=tensors, raw_input_contents=contents)
        parsed = pb.ModelInferRequest.FromString(request.SerializeToString())
        return decode_tensors(INPUTS, parsed.inputs, parsed.raw_input_contents)
    response = pb.ModelInferResponse(model_name="m", outputs=tensors, raw_output_contents=contents)
    answer = pb.ModelInferResponse.FromString(response.SerializeToString())
    return decode_tensors(OUTPUTS, answer.outputs, answer.raw_output_contents)


def tensor(
    role: Role[Any], datatype: str, shape: Sequence[int], name: str = "x", **contents: Any
) -> Any:
    return role.tensor_class(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


# ------------------------------------------------------------------- round trips


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("row", DATATYPES, ids=lambda row: row.name)
@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_round_trip(role: Role[Any], row: Datatype, raw: bool, shape: tuple[int, ...]) -> None:
    original = sample(row, shape)
    if row.field is None and not raw:
        with pytest.raises(
            TensorError, match=f"^{role.tensor} 'y': {row.name} has no typed contents"
        ):
            encode_tensor(role, "y", original, raw=False)
    else:
        out, data = encode_tensor(role, "y", original, raw=raw)
        assert isinstance(out, role.tensor_class)  # type: ignore[arg-type]
        assert (out.name, out.datatype, list(out.shape)) == ("y", row.name, list(shape))
        assert (data is not None) is raw
        if raw:
            assert not out.contents.ListFields()
    decoded = through_the_wire(role, {"y": original}, raw)["y"]
    assert_same(decoded, original, row, raw or row.field is None)


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_several_tensors_keep_their_order_and_values(role: Role[Any]) -> None:
    arrays = {
        "b": np.array([[1, -2]], dtype="<i8"),
        "a": np.arange(6, dtype="<f4").reshape(2, 3),
        "s": np.array([b"q", b""], dtype=object),
    }
    for raw in (True, False):
        decoded = through_the_wire(role, arrays, raw)
        assert list(decoded) == ["b", "a", "s"]
        for name, array in arrays.items():
            np.testing.assert_array_equal(decoded[name], array)


@pytest.mark.parametrize(
    "row",
    [r for r in DATATYPES if r.dtype.itemsize > 1 and r.name != "BYTES"],
    ids=lambda r: r.name,
)
def test_big_endian_arrays_are_written_little_endian(row: Datatype) -> None:
    little = sample(row, (3, 4))
    big = little.astype(row.dtype.newbyteorder(">"))
    assert big.tobytes() != little.tobytes()  # the test means something
    _, data = encode_tensor(INPUTS, "y", big, raw=True)
    assert data == little.tobytes()
    if row.field is not None:
        out, _ = encode_tensor(OUTPUTS, "y", big, raw=False)
        assert_same(decode_tensor(OUTPUTS, out, None), little, row, raw=False)


def test_signalling_nan_is_bit_exact_raw_and_still_nan_typed() -> None:
    snan = np.frombuffer(b"\x01\x00\x80\x7f", dtype="<f4")  # 0x7f800001
    _, data = encode_tensor(OUTPUTS, "y", snan, raw=True)
    assert data == snan.tobytes()
    out, _ = encode_tensor(OUTPUTS, "y", snan, raw=False)
    assert np.isnan(decode_tensor(OUTPUTS, out, None)).all()


def test_non_contiguous_arrays_are_written_row_major() -> None:
    array = np.arange(12, dtype="<i4").reshape(3, 4).T
    out, data = encode_tensor(INPUTS, "y", array, raw=True)
    assert list(out.shape) == [4, 3]
    assert data == np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_raw_contents_decode_to_a_read_only_view_of_the_message_bytes(role: Role[Any]) -> None:
    raw = np.arange(8, dtype="<f4").tobytes()
    array = decode_tensor(role, tensor(role, "FP32", [2, 4]), raw)
    assert np.shares_memory(array, np.frombuffer(raw, dtype=np.uint8))
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is raw
    assert not array.flags.writeable
    np.testing.assert_array_equal(array, np.arange(8, dtype=np.float32).reshape(2, 4))


def test_empty_batch_decodes_raw_and_typed() -> None:
    for raw in (b"", None):
        array = decode_tensor(INPUTS, tensor(INPUTS, "FP16", [0, 4]), raw)
        assert array.shape == (0, 4) and array.dtype == np.dtype("<f2")
        array = decode_tensor(OUTPUTS, tensor(OUTPUTS, "INT64", [0, 4]), raw)
        assert array.shape == (0, 4) and array.dtype == np.dtype("<i8")


def test_bytes_encode_str_as_utf8_with_length_prefixes() -> None:
    out, data = encode_tensor(OUTPUTS, "y", np.array(["é", "ab"], dtype=object), raw=True)
    assert out.datatype == "BYTES"
    assert data == b"\x02\x00\x00\x00\xc3\xa9" + b"\x02\x00\x00\x00ab"
    out, _ = encode_tensor(INPUTS, "y", np.array(["é", "ab"]), raw=False)
    assert list(out.contents.bytes_contents) == ["é".encode(), b"ab"]


def test_tensors_are_typed_unless_raw_is_asked_for() -> None:
    tensors, raw = encode_tensors(OUTPUTS, {"p": np.ones((2, 2), "<f4")}, raw=False)
    assert raw == [] and list(tensors[0].contents.fp32_contents) == [1.0] * 4
    tensors, raw = encode_tensors(OUTPUTS, {"p": np.ones((2, 2), "<f4")}, raw=True)
    assert raw == [np.ones(4, "<f4").tobytes()] and not tensors[0].contents.ListFields()


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_one_fp16_tensor_makes_the_whole_message_raw(role: Role[Any]) -> None:
    arrays = {"half": np.ones(3, "<f2"), "idx": np.arange(3, dtype="<i8")}
    tensors, raw = encode_tensors(role, arrays, raw=False)
    assert [t.name for t in tensors] == ["half", "idx"]
    assert raw == [np.ones(3, "<f2").tobytes(), np.arange(3, dtype="<i8").tobytes()]
    assert not any(t.contents.ListFields() for t in tensors)


# ---------------------------------------------------------------- bad tensors


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
@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_raw_byte_length_mismatch(
    role: Role[Any], datatype: str, shape: list[int], size: int, expected: int
) -> None:
    with pytest.raises(
        TensorError, match=rf"^{role.tensor} 'x': .* {size} bytes, .* needs {expected} bytes"
    ) as error:
        decode_tensor(role, tensor(role, datatype, shape), b"\x00" * size)
    assert (error.value.role, error.value.name) == (role, "x")


@pytest.mark.parametrize(
    ("datatype", "values", "shape"),
    [
        ("FP32", {"fp32_contents": [1.0, 2.0, 3.0]}, [2, 2]),
        ("INT64", {"int64_contents": [1, 2, 3, 4, 5]}, [2, 2]),
        ("BYTES", {"bytes_contents": [b"a"]}, [2]),
        ("BOOL", {"bool_contents": [True]}, [0, 4]),
    ],
)
@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_typed_count_mismatch(
    role: Role[Any], datatype: str, values: dict[str, Any], shape: list[int]
) -> None:
    received = len(next(iter(values.values())))
    needed = math.prod(shape)
    with pytest.raises(
        TensorError,
        match=rf"^{role.tensor} 'x': .* {received} values, .* needs {needed} .*{role.raw_field}",
    ):
        decode_tensor(role, tensor(role, datatype, shape, **values), None)


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_no_data_at_all(role: Role[Any]) -> None:
    with pytest.raises(
        TensorError, match=rf"^{role.tensor} 'x': no data, but shape \[2, 4\] needs 8 values"
    ):
        decode_tensor(role, tensor(role, "FP32", [2, 4]), None)


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
        TensorError,
        match=rf"^output 'x': datatype {datatype} takes .*contents\.{expected}, .*{got}",
    ):
        decode_tensor(OUTPUTS, tensor(OUTPUTS, datatype, [2], **values), None)


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_fp16_sent_typed_is_refused_with_the_way_out(role: Role[Any]) -> None:
    with pytest.raises(
        TensorError, match=f"^{role.tensor} 'x': FP16 values must be sent in {role.raw_field}"
    ):
        decode_tensor(role, tensor(role, "FP16", [2], fp32_contents=[1.0, 2.0]), None)


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_raw_and_typed_together(role: Role[Any]) -> None:
    with pytest.raises(
        TensorError, match=f"^{role.tensor} 'x': has both typed contents and {role.raw_field}"
    ):
        decode_tensor(role, tensor(role, "FP32", [1], fp32_contents=[1.0]), b"\x00" * 4)


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_unknown_datatype_lists_the_known_ones(role: Role[Any]) -> None:
    with pytest.raises(
        TensorError, match=rf"^{role.tensor} 'x': unknown datatype 'FP8' \(known: BOOL, "
    ):
        decode_tensor(role, tensor(role, "FP8", [1]), b"\x00")


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
@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_bad_shapes(role: Role[Any], shape: list[int], message: str, raw: bytes | None) -> None:
    with pytest.raises(TensorError, match=rf"^{role.tensor} 'x': .*{message}"):
        decode_tensor(role, tensor(role, "FP32", shape), raw)


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
    with pytest.raises(TensorError, match=rf"^input 'x': contents\.\w+ {message}"):
        decode_tensor(INPUTS, tensor(INPUTS, datatype, [2], **values), None)


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_raw_bool_bytes_must_be_zero_or_one(role: Role[Any]) -> None:
    with pytest.raises(TensorError, match=f"^{role.tensor} 'x': raw BOOL element 2 is byte 7"):
        decode_tensor(role, tensor(role, "BOOL", [4]), b"\x00\x01\x07\x00")


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
@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_malformed_raw_bytes(role: Role[Any], raw: bytes, message: str) -> None:
    with pytest.raises(TensorError, match=rf"^{role.tensor} 'x': raw BYTES .*{message}"):
        decode_tensor(role, tensor(role, "BYTES", [2]), raw)


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_raw_contents_count_must_match_the_tensors(role: Role[Any]) -> None:
    tensors = [tensor(role, "FP32", [1], name="a"), tensor(role, "FP32", [1], name="b")]
    with pytest.raises(
        MessageError,
        match=rf"^invalid {role.message}: {role.raw_field} has 1 entries but the "
        rf"{role.message} has 2 {role.tensor}s",
    ):
        decode_tensors(role, tensors, [b"\x00" * 4])


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_duplicate_names(role: Role[Any]) -> None:
    tensors = [
        tensor(role, "FP32", [1], fp32_contents=[1.0]),
        tensor(role, "FP32", [1], fp32_contents=[2.0]),
    ]
    with pytest.raises(
        TensorError, match=f"^{role.tensor} 'x': appears more than once in the {role.message}"
    ):
        decode_tensors(role, tensors, [])


# ---------------------------------------------------------- arrays not encodable


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_dtype_without_protocol_datatype(role: Role[Any]) -> None:
    with pytest.raises(
        TensorError, match=rf"^{role.tensor} 'y': NumPy dtype complex64 has no protocol"
    ):
        encode_tensor(role, "y", np.zeros(2, np.complex64), raw=True)


@pytest.mark.parametrize("role", ROLES, ids=role_id)
def test_bytes_elements_must_be_bytes_or_str(role: Role[Any]) -> None:
    with pytest.raises(TensorError, match=f"^{role.tensor} 'y': BYTES element 1 is a int"):
        encode_tensor(role, "y", np.array([b"a", 3], dtype=object), raw=True)


def test_codec_errors_are_value_errors() -> None:
    assert issubclass(TensorError, ValueError) and issubclass(MessageError, ValueError)


# ------------------------------------------------------------------- property


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
@given(original=arrays(), raw=st.booleans(), role=st.sampled_from(ROLES))
def test_property_round_trip_through_the_wire(
    original: np.ndarray, raw: bool, role: Role[Any]
) -> None:
    row = from_numpy(original.dtype)
    assert row is not None
    decoded = through_the_wire(role, {"t": original}, raw)["t"]
    assert_same(decoded, original, row, raw or row.field is None)
