"""Tensors on the wire <-> NumPy arrays, for either side and either direction.

The server decodes a request's inputs and encodes a response's outputs; the client does
the opposite. Both use these functions, and each says whose tensors it handles with a
:class:`Role`: :data:`INPUTS` (of a request) or :data:`OUTPUTS` (of a response). The role
names the tensor and the message in every error, so a malformed response reads
``output 'probabilities': ...`` and a malformed request ``input 'x': ...``.

Decoding (:func:`decode_tensors`, :func:`decode_tensor`) takes raw or typed contents; raw
contents become read-only NumPy views of the message's bytes (``np.frombuffer``, no copy)
after their byte length is checked against shape x item size. Encoding
(:func:`encode_tensors`, :func:`encode_tensor`) always writes little-endian. Every problem
raises a :class:`CodecError` -- :class:`TensorError` for one tensor, :class:`MessageError`
for the message as a whole -- and nothing else escapes for bad data.

Raw layout (the protocol's): elements flattened in row-major order without padding;
numbers little-endian; BOOL one byte (0 or 1) per element; BYTES a 4-byte little-endian
length, then the bytes, per element. Raw is bit-exact; typed floats pass through Python
floats, which keeps every value, infinity, -0.0 and NaN, but may quiet a signalling NaN.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from onnxforge.protocol.datatypes import KNOWN, Datatype, datatype, from_numpy
from onnxforge.protocol.generated import inference_pb2 as pb

__all__ = [
    "INPUTS",
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "OUTPUTS",
    "CodecError",
    "InputTensor",
    "MessageError",
    "OutputTensor",
    "Role",
    "TensorError",
    "check_shape",
    "decode_tensor",
    "decode_tensors",
    "encode_tensor",
    "encode_tensors",
]

InputTensor = pb.ModelInferRequest.InferInputTensor
OutputTensor = pb.ModelInferResponse.InferOutputTensor

#: A protobuf message cannot exceed 2 GiB and every element takes at least one byte on
#: the wire, so no real message holds more elements than this; larger shapes are refused
#: before any arithmetic or allocation depends on them.
MAX_ELEMENTS: Final = 2**31 - 1
#: NumPy 1.x's limit on the number of dimensions (NumPy 2 allows 64).
MAX_DIMS: Final = 32

T = TypeVar("T")


@dataclass(frozen=True)
class Role(Generic[T]):
    """Whose tensors: the words errors use and the message class a tensor is encoded into."""

    tensor: str
    """``"input"`` or ``"output"``: names the tensor in errors."""
    message: str
    """``"request"`` or ``"response"``: the message the tensors travel in."""
    raw_field: str
    """The message's field of raw contents."""
    tensor_class: Callable[..., T]
    """The tensor message: ``InferInputTensor`` or ``InferOutputTensor``."""


INPUTS: Final = Role("input", "request", "raw_input_contents", InputTensor)
OUTPUTS: Final = Role("output", "response", "raw_output_contents", OutputTensor)


class CodecError(ValueError):
    """A tensor or message the protocol cannot carry; ``role`` says whose."""

    def __init__(self, role: Role[Any], message: str) -> None:
        super().__init__(message)
        self.role = role


class TensorError(CodecError):
    """Tensor ``name`` is wrong: its datatype, shape, byte size or values."""

    def __init__(self, role: Role[Any], name: str, reason: str) -> None:
        super().__init__(role, f"{role.tensor} '{name}': {reason}")
        self.name = name
        self.reason = reason


class MessageError(CodecError):
    """The message as a whole is malformed (e.g. its count of raw contents)."""

    def __init__(self, role: Role[Any], reason: str) -> None:
        super().__init__(role, f"invalid {role.message}: {reason}")
        self.reason = reason


_BYTES: Final = "BYTES"
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


# ------------------------------------------------------------------------ decoding


def check_shape(role: Role[Any], name: str, shape: Iterable[int]) -> tuple[int, ...]:
    """Validate tensor ``name``'s dimensions: at most MAX_DIMS, each >= 0, few elements."""
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_DIMS:
        raise TensorError(
            role, name, f"shape has {len(dims)} dimensions; at most {MAX_DIMS} are supported"
        )
    for index, dim in enumerate(dims):
        if dim < 0:
            raise TensorError(
                role,
                name,
                f"shape {list(dims)} has a negative dimension {dim} at index {index}; "
                f"dimensions of a {role.message} must be >= 0",
            )
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise TensorError(
            role,
            name,
            f"shape {list(dims)} has {count} elements; "
            f"at most {MAX_ELEMENTS} elements fit in one {role.message}",
        )
    for index, dim in enumerate(dims):
        if dim > MAX_ELEMENTS:  # only possible beside a 0: an empty tensor with an absurd dim
            raise TensorError(
                role,
                name,
                f"shape {list(dims)} has dimension {dim} at index {index}; "
                f"no dimension can exceed {MAX_ELEMENTS}",
            )
    return dims


def decode_tensors(
    role: Role[Any], tensors: Sequence[Any], raw: Sequence[bytes]
) -> dict[str, np.ndarray]:
    """Decode every tensor of a message (raw or typed) into arrays keyed by name.

    ``tensors`` are the message's ``inputs`` or ``outputs``, ``raw`` its raw contents.
    """
    if raw and len(raw) != len(tensors):
        raise MessageError(
            role,
            f"{role.raw_field} has {len(raw)} entries but the {role.message} has "
            f"{len(tensors)} {role.tensor}s; send one entry per {role.tensor}, in the order "
            f"of {role.tensor}s",
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        if tensor.name in arrays:
            raise TensorError(role, tensor.name, f"appears more than once in the {role.message}")
        arrays[tensor.name] = decode_tensor(role, tensor, raw[index] if raw else None)
    return arrays


def decode_tensor(role: Role[Any], tensor: Any, raw: bytes | None) -> np.ndarray:
    """Decode one tensor: from ``raw`` bytes when given, else from its typed contents.

    Raw numeric data becomes a read-only view of ``raw`` (no copy), shaped as the tensor.
    """
    name = tensor.name
    row = datatype(tensor.datatype)
    if row is None:
        raise TensorError(role, name, f"unknown datatype '{tensor.datatype}' (known: {KNOWN})")
    shape = check_shape(role, name, tensor.shape)
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents") and tensor.contents.ListFields():
            raise TensorError(
                role,
                name,
                f"has both typed contents and {role.raw_field}; send one or the other",
            )
        return _from_raw(role, name, row, shape, count, raw)
    return _from_typed(role, name, row, shape, count, tensor.contents)


def _from_raw(
    role: Role[Any], name: str, row: Datatype, shape: tuple[int, ...], count: int, raw: bytes
) -> np.ndarray:
    if row.name == _BYTES:
        return _bytes_from_raw(role, name, shape, count, raw)
    expected = count * row.dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            role,
            name,
            f"raw contents hold {len(raw)} bytes, but shape {list(shape)} of {row.name} needs "
            f"{expected} bytes ({count} elements x {row.dtype.itemsize} bytes)",
        )
    if row.name == "BOOL" and count:
        octets = np.frombuffer(raw, dtype=np.uint8)
        if int(octets.max()) > 1:
            index = int(np.argmax(octets > 1))
            raise TensorError(
                role,
                name,
                f"raw BOOL element {index} is byte {octets[index]}; BOOL bytes must be 0 or 1",
            )
    return np.frombuffer(raw, dtype=row.dtype).reshape(shape)


def _bytes_from_raw(
    role: Role[Any], name: str, shape: tuple[int, ...], count: int, raw: bytes
) -> np.ndarray:
    if len(raw) < _LENGTH.size * count:
        raise TensorError(
            role,
            name,
            f"raw BYTES contents hold {len(raw)} bytes, but shape {list(shape)} needs at least "
            f"{_LENGTH.size * count} bytes ({count} elements x a {_LENGTH.size}-byte length)",
        )
    values = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(raw):
            raise TensorError(
                role,
                name,
                f"raw BYTES contents end at byte {len(raw)}, inside the length prefix of element "
                f"{index} of {count}",
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise TensorError(
                role,
                name,
                f"raw BYTES element {index} declares {length} bytes, but only "
                f"{len(raw) - offset} bytes remain",
            )
        values[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise TensorError(
            role,
            name,
            f"raw BYTES contents hold {len(raw)} bytes, but the {count} elements of shape "
            f"{list(shape)} end at byte {offset}",
        )
    return values.reshape(shape)


def _from_typed(
    role: Role[Any],
    name: str,
    row: Datatype,
    shape: tuple[int, ...],
    count: int,
    contents: pb.InferTensorContents,
) -> np.ndarray:
    present = [field.name for field, _ in contents.ListFields()]
    if row.field is None:
        if not present and count == 0:
            return np.empty(shape, dtype=row.dtype)
        raise TensorError(
            role,
            name,
            f"{row.name} values must be sent in {role.raw_field}: the protocol has no typed "
            f"contents field for {row.name}",
        )
    wrong = [field for field in present if field != row.field]
    if wrong:
        raise TensorError(
            role,
            name,
            f"datatype {row.name} takes its values in contents.{row.field}, "
            f"but got contents.{', contents.'.join(wrong)}",
        )
    values = getattr(contents, row.field)
    if len(values) != count:
        source = f"contents.{row.field} holds {len(values)} values" if present else "no data"
        raise TensorError(
            role,
            name,
            f"{source}, but shape {list(shape)} needs {count} values "
            f"(in contents.{row.field} or {role.raw_field})",
        )
    if row.name == _BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide: np.ndarray = np.fromiter(values, dtype=_FIELD_DTYPE[row.field], count=count)
    if wide.dtype != row.dtype:
        info = np.iinfo(row.dtype)
        outside = (wide < int(info.min)) | (wide > int(info.max))
        if outside.any():
            index = int(np.argmax(outside))
            raise TensorError(
                role,
                name,
                f"contents.{row.field} value {wide[index]} at index {index} is out of range "
                f"for {row.name} ({info.min}..{info.max})",
            )
        wide = wide.astype(row.dtype)
    return wide.reshape(shape)


# ------------------------------------------------------------------------ encoding


def encode_tensors(
    role: Role[T], arrays: Mapping[str, npt.ArrayLike], raw: bool
) -> tuple[list[T], list[bytes]]:
    """Encode every array; raw when ``raw`` or when some datatype has no typed field (FP16).

    The protocol forbids mixing raw and typed tensors in one message, hence one choice
    for all. Returns the tensors and the raw contents entries (empty if typed).
    """
    values = {name: np.asarray(value) for name, value in arrays.items()}
    rows = [_row_of(role, name, array) for name, array in values.items()]
    raw = raw or any(row.field is None for row in rows)
    tensors: list[T] = []
    contents: list[bytes] = []
    for name, array in values.items():
        tensor, data = encode_tensor(role, name, array, raw)
        tensors.append(tensor)
        if data is not None:
            contents.append(data)
    return tensors, contents


def encode_tensor(
    role: Role[T], name: str, array: npt.ArrayLike, raw: bool
) -> tuple[T, bytes | None]:
    """Encode one array as (tensor message, little-endian raw bytes or ``None`` if typed)."""
    array = np.asarray(array)
    row = _row_of(role, name, array)
    tensor: Any = role.tensor_class(name=name, datatype=row.name, shape=array.shape)
    if raw:
        return tensor, _to_raw(role, name, row, array)
    if row.field is None:
        raise TensorError(
            role,
            name,
            f"{row.name} has no typed contents field in the protocol; it can only be sent raw",
        )
    values = getattr(tensor.contents, row.field)
    if row.name == _BYTES:
        values.extend(_element_bytes(role, name, array))
    else:
        values.extend(array.ravel().tolist())
    return tensor, None


def _row_of(role: Role[Any], name: str, array: np.ndarray) -> Datatype:
    row = from_numpy(array.dtype)
    if row is None:
        raise TensorError(
            role, name, f"NumPy dtype {array.dtype} has no protocol datatype (supported: {KNOWN})"
        )
    return row


def _to_raw(role: Role[Any], name: str, row: Datatype, array: np.ndarray) -> bytes:
    if row.name == _BYTES:
        return b"".join(
            _LENGTH.pack(len(value)) + value for value in _element_bytes(role, name, array)
        )
    return np.ascontiguousarray(array, dtype=row.dtype).tobytes()


def _element_bytes(role: Role[Any], name: str, array: np.ndarray) -> Sequence[bytes]:
    """The elements of a BYTES tensor as ``bytes`` (``str`` is encoded as UTF-8)."""
    values: list[bytes] = []
    for index, value in enumerate(array.ravel().tolist()):
        if isinstance(value, bytes):
            values.append(value)
        elif isinstance(value, str):
            values.append(value.encode("utf-8"))
        else:
            raise TensorError(
                role,
                name,
                f"BYTES element {index} is a {type(value).__name__}; "
                "BYTES elements must be bytes or str",
            )
    return values
