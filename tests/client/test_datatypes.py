"""The one table of datatypes, held to ONNX, ONNX Runtime, NumPy and Triton themselves."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxforge.builder import runtime
from onnxforge.protocol.datatypes import (
    DATATYPES,
    DESCRIBED_ONLY,
    Datatype,
    datatype,
    from_numpy,
    from_onnx,
    from_ort,
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


def test_table_has_every_protocol_datatype_once() -> None:
    assert [row.name for row in DATATYPES] == PROTOCOL_DATATYPES


@pytest.mark.parametrize("row", DATATYPES, ids=lambda row: row.name)
def test_numpy_dtypes_are_explicitly_little_endian(row: Datatype) -> None:
    if row.name == "BYTES":
        assert row.dtype == np.dtype(object)
    else:
        assert row.dtype == row.dtype.newbyteorder("<")
        assert row.dtype.str[0] in "<|"


@pytest.mark.parametrize("row", DATATYPES, ids=lambda row: row.name)
def test_onnx_element_types_are_onnx_tensorproto_values(row: Datatype) -> None:
    onnx_name = {"FP16": "FLOAT16", "FP32": "FLOAT", "FP64": "DOUBLE", "BYTES": "STRING"}
    assert row.onnx_type == getattr(onnx.TensorProto, onnx_name.get(row.name, row.name))
    onnx_dtype = helper.tensor_dtype_to_np_dtype(row.onnx_type)
    if row.name == "BYTES":
        assert onnx_dtype == np.dtype(object)
    else:
        assert onnx_dtype.newbyteorder("<") == row.dtype


def test_described_only_types_are_onnx_values_outside_the_table() -> None:
    assert DESCRIBED_ONLY == {onnx.TensorProto.BFLOAT16: "BF16"}
    assert all(from_onnx(elem_type) is None for elem_type in DESCRIBED_ONLY)


@pytest.mark.parametrize("row", DATATYPES, ids=lambda row: row.name)
def test_ort_type_strings_are_what_onnx_runtime_reports(row: Datatype) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", row.onnx_type, [2])],
        [helper.make_tensor_value_info("y", row.onnx_type, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = runtime.session(model.SerializeToString(), threads=1)
    assert session.get_inputs()[0].type == row.ort_type
    assert session.get_outputs()[0].type == row.ort_type


TRITON_CHECK = """
import json, sys
import numpy as np
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import triton_to_np_dtype
from onnxforge.protocol.datatypes import DATATYPES

names = model_config_pb2.DataType.keys()
json.dump({
    row.name: [row.triton_type in names, str(np.dtype(triton_to_np_dtype(row.name)))]
    for row in DATATYPES
}, sys.stdout)
"""


@pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed"
)
def test_triton_types_and_dtypes_are_tritons_own() -> None:
    # A process of its own: tritonclient registers protocol messages of the same names.
    found = subprocess.run(
        [sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, check=True
    )
    for name, (known, triton_dtype) in json.loads(found.stdout).items():
        assert known, f"{ROWS[name].triton_type} is not one of Triton's DataType values"
        assert np.dtype(triton_dtype).newbyteorder("<") == ROWS[name].dtype, name
    assert ROWS["BYTES"].triton_type == "TYPE_STRING"
    assert ROWS["FP32"].triton_type == "TYPE_FP32"


@pytest.mark.parametrize("row", DATATYPES, ids=lambda row: row.name)
def test_lookups_find_each_row(row: Datatype) -> None:
    assert datatype(row.name) is row
    assert from_onnx(row.onnx_type) is row
    assert from_ort(row.ort_type) is row
    assert from_numpy(row.dtype) is row
    assert from_numpy(row.dtype.name) is row


def test_lookups_of_unsupported_types() -> None:
    assert datatype("BF16") is None
    assert from_onnx(onnx.TensorProto.BFLOAT16) is None
    assert from_ort("tensor(bfloat16)") is None
    assert from_numpy(np.complex64) is None
    assert from_numpy(">f8") is ROWS["FP64"]
    assert from_numpy("S5") is ROWS["BYTES"]
    assert from_numpy("U3") is ROWS["BYTES"]


@pytest.mark.parametrize(
    ("name", "field"),
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
def test_contents_field_per_datatype(name: str, field: str | None) -> None:
    assert ROWS[name].field == field
