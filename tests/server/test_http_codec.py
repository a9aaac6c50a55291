"""The HTTP/REST inference codec, by round trip for every datatype: JSON and binary alike.

Requests are written by hand from the KServe v2 and Triton binary-tensor documents
(``tests.server.http_helpers``' way), decoded by ``rest.codec``; answers are encoded by it
and read back with NumPy alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxforge.protocol.datatypes import DATATYPES
from onnxforge.server.errors import InvalidInput, InvalidRequest
from onnxforge.server.rest import codec

SHAPE = (2, 3)


def sample(name: str) -> np.ndarray:
    """Values of datatype ``name`` that reach its edges (min, max, -0.0, ...)."""
    row = next(row for row in DATATYPES if row.name == name)
    if name == "BYTES":
        values = np.array([b"", b"a", "é".encode(), b"xyz", b"0", b"tail"], dtype=object)
        return values.reshape(SHAPE)
    if name == "BOOL":
        return np.array([True, False, True, True, False, False]).reshape(SHAPE)
    if row.dtype.kind == "f":
        info = np.finfo(row.dtype)
        values = [0.0, -0.0, 1.5, float(info.max), float(info.tiny), -2.25]
        return np.array(values, dtype=row.dtype).reshape(SHAPE)
    info_i = np.iinfo(row.dtype)
    values_i = [int(info_i.min), int(info_i.max), 0, 1, int(info_i.max) - 1, 7]
    return np.array(values_i, dtype=row.dtype).reshape(SHAPE)


def json_data(array: np.ndarray) -> list[object]:
    if array.dtype == object:
        return [value.decode() for value in array.ravel()]
    return array.ravel().tolist()  # type: ignore[no-any-return]


def raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return b"".join(len(value).to_bytes(4, "little") + value for value in array.ravel())
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("name", [row.name for row in DATATYPES])
def test_json_data_decodes_to_the_values_sent(name: str) -> None:
    array = sample(name)
    tensor = {"name": "t", "shape": list(SHAPE), "datatype": name, "data": json_data(array)}
    decoded = codec.decode_request(json.dumps({"inputs": [tensor]}).encode(), None)
    got = decoded.request.inputs["t"]
    assert got.shape == SHAPE
    assert decoded.request.datatypes == {"t": name}
    np.testing.assert_array_equal(got, array)
    if array.dtype != object:
        assert got.dtype == array.dtype
        assert np.signbit(got).tolist() == np.signbit(array).tolist()  # -0.0 kept


@pytest.mark.parametrize("name", [row.name for row in DATATYPES])
def test_binary_data_decodes_to_the_bytes_sent(name: str) -> None:
    array = sample(name)
    data = raw(array)
    parameters = {"binary_data_size": len(data)}
    tensor = {"name": "t", "shape": list(SHAPE), "datatype": name, "parameters": parameters}
    header = json.dumps({"inputs": [tensor]}).encode()
    decoded = codec.decode_request(header + data, str(len(header)))
    np.testing.assert_array_equal(decoded.request.inputs["t"], array)


@pytest.mark.parametrize("name", [row.name for row in DATATYPES])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_answers_read_back_to_the_outputs(name: str, binary: bool) -> None:
    array = sample(name)
    request = json.dumps(
        {
            "id": "7",
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}],
            "outputs": [{"name": "out", "parameters": {"binary_data": binary}}],
        }
    ).encode()
    decoded = codec.decode_request(request, None)
    encoded = codec.encode_response("m", "1", {"out": array}, decoded)
    split = encoded.header_length if binary else len(encoded.body)
    assert (encoded.header_length is not None) == binary
    document = json.loads(encoded.body[:split])
    assert (document["model_name"], document["model_version"], document["id"]) == ("m", "1", "7")
    (tensor,) = document["outputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("out", name, list(SHAPE))
    if binary:
        assert tensor["parameters"]["binary_data_size"] == len(encoded.body) - split
        assert encoded.body[split:] == raw(array)
    else:
        assert tensor["data"] == json_data(array)


def test_nested_data_is_read_row_major() -> None:
    data = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    tensor = {"name": "t", "shape": [2, 2, 2], "datatype": "INT64", "data": data}
    decoded = codec.decode_request(json.dumps({"inputs": [tensor]}).encode(), None)
    np.testing.assert_array_equal(decoded.request.inputs["t"], np.arange(1, 9).reshape(2, 2, 2))


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT8", [128], "value 128 is out of range for INT8 (-128..127)"),
        ("UINT8", [-1], "value -1 is out of range for UINT8 (0..255)"),
        ("INT32", [1.5], "INT32 takes integers; 'data' value 0 is 1.5"),
        ("BOOL", [1], "BOOL takes true or false; 'data' value 0 is 1"),
        ("BYTES", [3], "BYTES takes strings in JSON; 'data' value 0 is 3"),
        ("FP32", [10**400], "a 'data' value is too large for FP32"),
    ],
)
def test_json_values_outside_the_datatype_are_refused(
    datatype: str, data: list[object], message: str
) -> None:
    tensor = {"name": "t", "shape": [1], "datatype": datatype, "data": data}
    with pytest.raises(InvalidInput, match="input 't': ") as error:
        codec.decode_request(json.dumps({"inputs": [tensor]}).encode(), None)
    assert message in error.value.message


def test_an_input_named_twice_and_a_bad_id_are_refused() -> None:
    tensor = {"name": "t", "shape": [1], "datatype": "FP32", "data": [1]}
    with pytest.raises(InvalidInput, match="appears more than once"):
        codec.decode_request(json.dumps({"inputs": [tensor, tensor]}).encode(), None)
    with pytest.raises(InvalidRequest, match="'id' must be a string"):
        codec.decode_request(json.dumps({"id": 3, "inputs": [tensor]}).encode(), None)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"parameters": {"timeout": -5}}, "parameter 'timeout' must be microseconds"),
        ({"parameters": {"timeout": "soon"}}, "parameter 'timeout' must be microseconds"),
        ({"parameters": {"a": {"b": 1}}}, "'a' must be a string, a number or a boolean"),
        ({"parameters": {"binary_data_output": 1}}, "binary_data_output must be true or false"),
        ({"outputs": {"name": "y"}}, "'outputs' must be a list, got an object"),
        ({"outputs": [{"name": "y", "binary": True}]}, "output 'y' has an unknown key 'binary'"),
    ],
)
def test_bad_parameters_and_outputs_are_refused(document: dict[str, object], message: str) -> None:
    tensor = {"name": "t", "shape": [1], "datatype": "FP32", "data": [1]}
    with pytest.raises(InvalidRequest) as error:
        codec.decode_request(json.dumps({"inputs": [tensor], **document}).encode(), None)
    assert message in error.value.message


def test_timeout_is_read_in_microseconds() -> None:
    tensor = {"name": "t", "shape": [1], "datatype": "FP32", "data": [1]}
    body = json.dumps({"inputs": [tensor], "parameters": {"timeout": 2500}}).encode()
    assert codec.decode_request(body, None).timeout_us == 2500
