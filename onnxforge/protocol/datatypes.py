"""The one table of tensor datatypes: protocol name, NumPy, ONNX, ONNX Runtime, Triton.

Every place that names a tensor's element type reads :data:`DATATYPES`: the tensor codec
(:mod:`onnxforge.protocol.tensors`), the server's metadata and sessions, the client, the
edge manifest and ``config.pbtxt``. One row per datatype of the Open Inference Protocol
that onnxforge carries:

==========  ==========  ===============  =====  =================  ===========
protocol    NumPy       typed contents   ONNX   ONNX Runtime       Triton
==========  ==========  ===============  =====  =================  ===========
BOOL        ``|b1``     bool_contents    9      tensor(bool)       TYPE_BOOL
UINT8       ``|u1``     uint_contents    2      tensor(uint8)      TYPE_UINT8
UINT16      ``<u2``     uint_contents    4      tensor(uint16)     TYPE_UINT16
UINT32      ``<u4``     uint_contents    12     tensor(uint32)     TYPE_UINT32
UINT64      ``<u8``     uint64_contents  13     tensor(uint64)     TYPE_UINT64
INT8        ``|i1``     int_contents     3      tensor(int8)       TYPE_INT8
INT16       ``<i2``     int_contents     5      tensor(int16)      TYPE_INT16
INT32       ``<i4``     int_contents     6      tensor(int32)      TYPE_INT32
INT64       ``<i8``     int64_contents   7      tensor(int64)      TYPE_INT64
FP16        ``<f2``     (raw only)       10     tensor(float16)    TYPE_FP16
FP32        ``<f4``     fp32_contents    1      tensor(float)      TYPE_FP32
FP64        ``<f8``     fp64_contents    11     tensor(double)     TYPE_FP64
BYTES       ``object``  bytes_contents   8      tensor(string)     TYPE_STRING
==========  ==========  ===============  =====  =================  ===========

NumPy dtypes carry an explicit byte order (the protocol's raw layout is little-endian).
ONNX element types are plain ints equal to ``onnx.TensorProto.<TYPE>`` (a test holds them
to ONNX), so that this module -- and the client, which reads it -- never imports ``onnx``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DATATYPES",
    "DESCRIBED_ONLY",
    "KNOWN",
    "Datatype",
    "datatype",
    "from_numpy",
    "from_onnx",
    "from_ort",
]


@dataclass(frozen=True)
class Datatype:
    """One row of the table."""

    name: str
    """Protocol datatype string, e.g. ``"FP32"``."""
    dtype: np.dtype[Any]
    """NumPy dtype with explicit byte order (``"<f4"``); ``object`` (bytes) for BYTES."""
    field: str | None
    """InferTensorContents field holding typed values; ``None`` when only raw exists."""
    onnx_type: int
    """``onnx.TensorProto`` element type (a plain int: ``TensorProto.FLOAT`` is 1)."""
    ort_type: str
    """ONNX Runtime's type string, as in ``session.get_inputs()[0].type``."""
    triton_type: str
    """Triton's ``DataType`` in ``config.pbtxt`` (``TYPE_FP32``; BYTES is ``TYPE_STRING``)."""


def _row(name: str, dtype: str, field: str | None, onnx: int, ort: str, triton: str) -> Datatype:
    return Datatype(name, np.dtype(dtype), field, onnx, f"tensor({ort})", f"TYPE_{triton}")


DATATYPES: Final[tuple[Datatype, ...]] = (
    _row("BOOL", "|b1", "bool_contents", 9, "bool", "BOOL"),
    _row("UINT8", "|u1", "uint_contents", 2, "uint8", "UINT8"),
    _row("UINT16", "<u2", "uint_contents", 4, "uint16", "UINT16"),
    _row("UINT32", "<u4", "uint_contents", 12, "uint32", "UINT32"),
    _row("UINT64", "<u8", "uint64_contents", 13, "uint64", "UINT64"),
    _row("INT8", "|i1", "int_contents", 3, "int8", "INT8"),
    _row("INT16", "<i2", "int_contents", 5, "int16", "INT16"),
    _row("INT32", "<i4", "int_contents", 6, "int32", "INT32"),
    _row("INT64", "<i8", "int64_contents", 7, "int64", "INT64"),
    _row("FP16", "<f2", None, 10, "float16", "FP16"),
    _row("FP32", "<f4", "fp32_contents", 1, "float", "FP32"),
    _row("FP64", "<f8", "fp64_contents", 11, "double", "FP64"),
    _row("BYTES", "O", "bytes_contents", 8, "string", "STRING"),
)

#: Protocol datatypes without a NumPy dtype, by ONNX element type: a model description
#: (the edge manifest) names them, but no tensor of them is encoded or served here.
DESCRIBED_ONLY: Final[Mapping[int, str]] = {16: "BF16"}  # TensorProto.BFLOAT16

#: The protocol names, for messages that list the alternatives.
KNOWN: Final = ", ".join(row.name for row in DATATYPES)

_BY_NAME: Final = {row.name: row for row in DATATYPES}
_BY_ONNX: Final = {row.onnx_type: row for row in DATATYPES}
_BY_ORT: Final = {row.ort_type: row for row in DATATYPES}
_BY_KIND: Final = {(row.dtype.kind, row.dtype.itemsize): row for row in DATATYPES}
_BYTES: Final = _BY_NAME["BYTES"]


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
