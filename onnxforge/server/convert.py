"""Protocol <-> NumPy conversion: the one module that knows how tensors travel.

One table, :data:`DATATYPES`, ties together for every protocol datatype its explicit
little-endian NumPy dtype, the :class:`InferTensorContents` field that carries its typed
values (``None`` for FP16: the protocol sends it raw only), its ONNX element type and its
ONNX Runtime type string. Everything else here reads that table.

Requests are decoded with :func:`input_arrays` / :func:`input_array`; raw contents become
read-only NumPy views of the request's bytes (``np.frombuffer``, no copy) after their byte
length is checked against shape x item size. Answers are encoded with
:func:`output_tensors` / :func:`output_tensor`, always little-endian. Every problem with a
request raises :class:`~server.errors.InvalidInput` (or ``InvalidRequest``) naming the
input and what was expected and received; nothing else escapes for bad input.

Raw layout (the protocol's): elements flattened in row-major order without padding;
numbers little-endian; BOOL one byte (0 or 1) per element; BYTES a 4-byte little-endian
length, then the bytes, per element. Raw is bit-exact; typed floats pass through Python
floats, which keeps every value, infinity, -0.0 and NaN, but may quiet a signalling NaN.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from onnx import TensorProto

from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.server.errors import InvalidInput, InvalidOutput, InvalidRequest

__all__ = [
    "DATATYPES",
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "Datatype",
    "InputTensor",
    "OutputTensor",
    "check_shape",
    "datatype",
    "from_numpy",
    "from_onnx",
    "from_ort",
    "input_array",
    "input_arrays",
    "output_tensor",
    "output_tensors",
]

InputTensor = pb.ModelInferRequest.InferInputTensor
OutputTensor = pb.ModelInferResponse.InferOutputTensor

#: A protobuf message cannot exceed 2 GiB and every element takes at least one byte on
#: the wire, so no real request holds more elements than this; larger shapes are refused
#: before any arithmetic or allocation depends on them.
MAX_ELEMENTS: Final = 2**31 - 1
#: NumPy 1.x's limit on the number of dimensions (NumPy 2 allows 64).
MAX_DIMS: Final = 32


@dataclass(frozen=True)
class Datatype:
    """One row of the conversion table."""

    name: str
    """Protocol datatype string, e.g. ``"FP32"``."""
    dtype: np.dtype[Any]
    """NumPy dtype with explicit byte order (``"<f4"``); ``object`` (bytes) for BYTES."""
    field: str | None
    """InferTensorContents field holding typed values; ``None`` when only raw exists."""
    onnx_type: int
    """``onnx.TensorProto`` element type."""
    ort_type: str
    """ONNX Runtime's type string, as in ``session.get_inputs()[0].type``."""


DATATYPES: Final[tuple[Datatype, ...]] = (
    Datatype("BOOL", np.dtype("|b1"), "bool_contents", TensorProto.BOOL, "tensor(bool)"),
    Datatype("UINT8", np.dtype("|u1"), "uint_contents", TensorProto.UINT8, "tensor(uint8)"),
    Datatype("UINT16", np.dtype("<u2"), "uint_contents", TensorProto.UINT16, "tensor(uint16)"),
    Datatype("UINT32", np.dtype("<u4"), "uint_contents", TensorProto.UINT32, "tensor(uint32)"),
    Datatype("UINT64", np.dtype("<u8"), "uint64_contents", TensorProto.UINT64, "tensor(uint64)"),
    Datatype("INT8", np.dtype("|i1"), "int_contents", TensorProto.INT8, "tensor(int8)"),
    Datatype("INT16", np.dtype("<i2"), "int_contents", TensorProto.INT16, "tensor(int16)"),
    Datatype("INT32", np.dtype("<i4"), "int_contents", TensorProto.INT32, "tensor(int32)"),
    Datatype("INT64", np.dtype("<i8"), "int64_contents", TensorProto.INT64, "tensor(int64)"),
    Datatype("FP16", np.dtype("<f2"), None, TensorProto.FLOAT16, "tensor(float16)"),
    Datatype("FP32", np.dtype("<f4"), "fp32_contents", TensorProto.FLOAT, "tensor(float)"),
    Datatype("FP64", np.dtype("<f8"), "fp64_contents", TensorProto.DOUBLE, "tensor(double)"),
    Datatype("BYTES", np.dtype(object), "bytes_contents", TensorProto.STRING, "tensor(string)"),
)

_BY_NAME: Final = {row.name: row for row in DATATYPES}
_BY_ONNX: Final = {row.onnx_type: row for row in DATATYPES}
_BY_ORT: Final = {row.ort_type: row for row in DATATYPES}
_BY_KIND: Final = {(row.dtype.kind, row.dtype.itemsize): row for row in DATATYPES}
_BYTES: Final = _BY_NAME["BYTES"]
_KNOWN: Final = ", ".join(_BY_NAME)

#: The dtype each typed-contents field decodes to before narrowing (INT8 rides in int32).
_FIELD_DTYPE: Final = {
    "bool_contents": np.dtype("|b1"),
    "int_contents": np.dtype("<i4"),
    "int64_contents": np.dtype("<i8"),
    "uint_contents": np.dtype("<u4"),
    "uint64_contents": np.dtype("<u8"),
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}
_LENGTH = struct.Struct("<I")


# ------------------------------------------------------------------ table lookups


def datatype(name: str) -> Datatype | None:
    """The row for a protocol datatype string (``"FP32"``), or ``None`` if unknown."""
    return _BY_NAME.get(name)


def from_numpy(dtype: npt.DTypeLike) -> Datatype | None:
    """The row for a NumPy dtype of either byte order; bytes/str/object give BYTES."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return _BYTES
    return _BY_KIND.get((dtype.kind, dtype.itemsize))


def from_onnx(elem_type: int) -> Datatype | None:
    """The row for an ``onnx.TensorProto`` element type, or ``None`` if unsupported."""
    return _BY_ONNX.get(elem_type)


def from_ort(type_string: str) -> Datatype | None:
    """The row for an ONNX Runtime type string (``"tensor(float)"``), or ``None``."""
    return _BY_ORT.get(type_string)


# ----------------------------------------------------------------------- requests


def check_shape(name: str, shape: Iterable[int]) -> tuple[int, ...]:
    """Validate input ``name``'s dimensions: at most MAX_DIMS, each >= 0, few enough elements."""
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_DIMS:
        raise InvalidInput(
            name, f"shape has {len(dims)} dimensions; at most {MAX_DIMS} are supported"
        )
    for index, dim in enumerate(dims):
        if dim < 0:
            raise InvalidInput(
                name,
                f"shape {list(dims)} has a negative dimension {dim} at index {index}; "
                "dimensions of a request must be >= 0",
            )
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise InvalidInput(
            name,
            f"shape {list(dims)} has {count} elements; "
            f"at most {MAX_ELEMENTS} elements fit in one request",
        )
    for index, dim in enumerate(dims):
        if dim > MAX_ELEMENTS:  # only possible beside a 0: an empty tensor with an absurd dim
            raise InvalidInput(
                name,
                f"shape {list(dims)} has dimension {dim} at index {index}; "
                f"no dimension can exceed {MAX_ELEMENTS}",
            )
    return dims


def input_arrays(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """Decode every input of ``request`` (raw or typed) into arrays keyed by input name."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{len(request.inputs)} inputs; send one entry per input, in the order of inputs"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise InvalidInput(tensor.name, "appears more than once in the request")
        arrays[tensor.name] = input_array(tensor, raw[index] if raw else None)
    return arrays


def input_array(tensor: InputTensor | OutputTensor, raw: bytes | None) -> np.ndarray:
    """Decode one input tensor: from ``raw`` bytes when given, else from its typed contents.

    Raw numeric data becomes a read-only view of ``raw`` (no copy), shaped as the tensor.
    """
    name = tensor.name
    row = _BY_NAME.get(tensor.datatype)
    if row is None:
        raise InvalidInput(name, f"unknown datatype '{tensor.datatype}' (known: {_KNOWN})")
    shape = check_shape(name, tensor.shape)
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents") and tensor.contents.ListFields():
            raise InvalidInput(
                name, "has both typed contents and raw_input_contents; send one or the other"
            )
        return _from_raw(name, row, shape, count, raw)
    return _from_typed(name, row, shape, count, tensor.contents)


def _from_raw(
    name: str, row: Datatype, shape: tuple[int, ...], count: int, raw: bytes
) -> np.ndarray:
    if row is _BYTES:
        return _bytes_from_raw(name, shape, count, raw)
    expected = count * row.dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            name,
            f"raw contents hold {len(raw)} bytes, but shape {list(shape)} of {row.name} needs "
            f"{expected} bytes ({count} elements x {row.dtype.itemsize} bytes)",
        )
    if row.name == "BOOL" and count:
        octets = np.frombuffer(raw, dtype=np.uint8)
        if int(octets.max()) > 1:
            index = int(np.argmax(octets > 1))
            raise InvalidInput(
                name, f"raw BOOL element {index} is byte {octets[index]}; BOOL bytes must be 0 or 1"
            )
    return np.frombuffer(raw, dtype=row.dtype).reshape(shape)


def _bytes_from_raw(name: str, shape: tuple[int, ...], count: int, raw: bytes) -> np.ndarray:
    if len(raw) < _LENGTH.size * count:
        raise InvalidInput(
            name,
            f"raw BYTES contents hold {len(raw)} bytes, but shape {list(shape)} needs at least "
            f"{_LENGTH.size * count} bytes ({count} elements x a {_LENGTH.size}-byte length)",
        )
    values = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(raw):
            raise InvalidInput(
                name,
                f"raw BYTES contents end at byte {len(raw)}, inside the length prefix of element "
                f"{index} of {count}",
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise InvalidInput(
                name,
                f"raw BYTES element {index} declares {length} bytes, but only "
                f"{len(raw) - offset} bytes remain",
            )
        values[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidInput(
            name,
            f"raw BYTES contents hold {len(raw)} bytes, but the {count} elements of shape "
            f"{list(shape)} end at byte {offset}",
        )
    return values.reshape(shape)


def _from_typed(
    name: str, row: Datatype, shape: tuple[int, ...], count: int, contents: pb.InferTensorContents
) -> np.ndarray:
    present = [field.name for field, _ in contents.ListFields()]
    if row.field is None:
        if not present and count == 0:
            return np.empty(shape, dtype=row.dtype)
        raise InvalidInput(
            name,
            f"{row.name} values must be sent in raw_input_contents: the protocol has no typed "
            f"contents field for {row.name}",
        )
    wrong = [field for field in present if field != row.field]
    if wrong:
        raise InvalidInput(
            name,
            f"datatype {row.name} takes its values in contents.{row.field}, "
            f"but got contents.{', contents.'.join(wrong)}",
        )
    values = getattr(contents, row.field)
    if len(values) != count:
        source = f"contents.{row.field} holds {len(values)} values" if present else "no data"
        raise InvalidInput(
            name,
            f"{source}, but shape {list(shape)} needs {count} values "
            f"(in contents.{row.field} or raw_input_contents)",
        )
    if row is _BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide: np.ndarray = np.fromiter(values, dtype=_FIELD_DTYPE[row.field], count=count)
    if wide.dtype != row.dtype:
        info = np.iinfo(row.dtype)
        outside = (wide < int(info.min)) | (wide > int(info.max))
        if outside.any():
            index = int(np.argmax(outside))
            raise InvalidInput(
                name,
                f"contents.{row.field} value {wide[index]} at index {index} is out of range "
                f"for {row.name} ({info.min}..{info.max})",
            )
        wide = wide.astype(row.dtype)
    return wide.reshape(shape)


# ---------------------------------------------------------------------- responses


def output_tensors(
    outputs: Mapping[str, npt.ArrayLike], raw: bool
) -> tuple[list[OutputTensor], list[bytes]]:
    """Encode every output; raw when ``raw`` or when some output has no typed field (FP16).

    The protocol forbids mixing raw and typed outputs in one response, hence one choice
    for all. Returns the tensors and the ``raw_output_contents`` entries (empty if typed).
    """
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    rows = [_output_row(name, array) for name, array in arrays.items()]
    raw = raw or any(row.field is None for row in rows)
    tensors: list[OutputTensor] = []
    contents: list[bytes] = []
    for name, array in arrays.items():
        tensor, data = output_tensor(name, array, raw)
        tensors.append(tensor)
        if data is not None:
            contents.append(data)
    return tensors, contents


def output_tensor(name: str, array: npt.ArrayLike, raw: bool) -> tuple[OutputTensor, bytes | None]:
    """Encode one output as (tensor message, little-endian raw bytes or ``None`` if typed)."""
    array = np.asarray(array)
    row = _output_row(name, array)
    tensor = OutputTensor(name=name, datatype=row.name, shape=array.shape)
    if raw:
        return tensor, _to_raw(name, row, array)
    if row.field is None:
        raise InvalidOutput(
            name, f"{row.name} has no typed contents field in the protocol; it can only be sent raw"
        )
    values = getattr(tensor.contents, row.field)
    if row is _BYTES:
        values.extend(_element_bytes(name, array))
    else:
        values.extend(array.ravel().tolist())
    return tensor, None


def _output_row(name: str, array: np.ndarray) -> Datatype:
    row = from_numpy(array.dtype)
    if row is None:
        raise InvalidOutput(
            name, f"NumPy dtype {array.dtype} has no protocol datatype (supported: {_KNOWN})"
        )
    return row


def _to_raw(name: str, row: Datatype, array: np.ndarray) -> bytes:
    if row is _BYTES:
        return b"".join(_LENGTH.pack(len(value)) + value for value in _element_bytes(name, array))
    return np.ascontiguousarray(array, dtype=row.dtype).tobytes()


def _element_bytes(name: str, array: np.ndarray) -> Sequence[bytes]:
    """The elements of a BYTES output as ``bytes`` (``str`` is encoded as UTF-8)."""
    values: list[bytes] = []
    for index, value in enumerate(array.ravel().tolist()):
        if isinstance(value, bytes):
            values.append(value)
        elif isinstance(value, str):
            values.append(value.encode("utf-8"))
        else:
            raise InvalidOutput(
                name,
                f"BYTES element {index} is a {type(value).__name__}; "
                "BYTES elements must be bytes or str",
            )
    return values
