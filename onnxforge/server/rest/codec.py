"""KServe v2 REST inference bodies <-> the data plane's values: JSON tensors and binary data.

A request body is a JSON object, optionally followed by the binary data of some inputs
(Triton's binary tensor extension): the header ``Inference-Header-Content-Length`` says
where the JSON ends, and each binary input says its size in its ``binary_data_size``
parameter, in the order the inputs are listed::

    {"id": "1", "parameters": {"binary_data_output": true},
     "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[...], [...]]}],
     "outputs": [{"name": "y", "parameters": {"binary_data": true}}]}

JSON ``data`` is flat or nested row-major (only the element count must match the shape);
numbers for the numeric datatypes, ``true``/``false`` for BOOL, strings for BYTES. Binary
data is the protocol's raw layout, decoded by :mod:`onnxforge.protocol.tensors` (the
gRPC transport's codec) so that both transports check it alike. An answer carries each
output as JSON ``data``, or as binary data after the JSON when the request asked for it
(``binary_data`` on the output, or ``binary_data_output`` on the request).

Every problem is an ``InvalidRequest`` or ``InvalidInput`` (HTTP 400) saying what was
expected; nothing else escapes for a bad body.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from onnxforge.protocol.datatypes import KNOWN, Datatype, datatype, from_numpy
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.server import convert
from onnxforge.server.dataplane import InferRequest, RequestedOutput
from onnxforge.server.errors import InvalidInput, InvalidOutput, InvalidRequest

__all__ = [
    "HEADER_LENGTH",
    "EncodedResponse",
    "HttpInferRequest",
    "decode_request",
    "encode_response",
    "plain_parameters",
]

#: Triton's header: the byte length of the JSON part of a body that binary data follows.
HEADER_LENGTH: Final = "Inference-Header-Content-Length"
BINARY_SIZE: Final = "binary_data_size"
EXAMPLE: Final = (
    '{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}'
)
_REQUEST_KEYS: Final = ("id", "parameters", "inputs", "outputs")
_INPUT_KEYS: Final = ("name", "shape", "datatype", "parameters", "data")
_OUTPUT_KEYS: Final = ("name", "parameters")


@dataclass(frozen=True)
class HttpInferRequest:
    """A decoded inference body: the data plane's request, and how to answer it."""

    request: InferRequest
    id: str | None
    binary: Mapping[str, bool]  # per requested output: answer it as binary data
    binary_default: bool  # for the outputs not listed: binary_data_output
    timeout_us: int | None  # Triton's "timeout" parameter (microseconds)

    def wants_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


@dataclass(frozen=True)
class EncodedResponse:
    """An answer's body, and the length of its JSON part when binary data follows it."""

    body: bytes
    header_length: int | None


# ------------------------------------------------------------------ requests


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a body (``header_length``: the header's value)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    length = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= length <= len(body):
        raise InvalidRequest(
            f"header {HEADER_LENGTH} must be the byte length of the JSON part, from 0 to "
            f"{len(body)} (the body's size), got '{header_length[:40]}'"
        )
    return body[:length], memoryview(body)[length:]


def decode_request(body: bytes, header_length: str | None) -> HttpInferRequest:
    """An inference request from its body; see the module docstring."""
    text, binary = split_body(body, header_length)
    document = _object(text, "an inference request")
    _known_keys(document, _REQUEST_KEYS, "the request")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest(f"'inputs' must be a non-empty list of tensors, as in {EXAMPLE}")
    parameters = plain_parameters(document.get("parameters"), "the request's 'parameters'")
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for index, tensor in enumerate(inputs):
        name, row, shape, size, data = _input_fields(index, tensor)
        if name in arrays:
            raise InvalidInput(name, "appears more than once in the request")
        datatypes[name] = row.name
        if size is None:
            arrays[name] = _from_json(name, row, shape, data)
            continue
        if offset + size > len(binary):
            raise InvalidInput(
                name,
                f"{BINARY_SIZE} is {size} bytes, but only {len(binary) - offset} bytes of "
                f"binary data remain after the JSON ({HEADER_LENGTH}: the JSON's length)",
            )
        raw = bytes(binary[offset : offset + size])
        offset += size
        message = pb.ModelInferRequest.InferInputTensor(name=name, datatype=row.name, shape=shape)
        arrays[name] = convert.input_array(message, raw)
    if offset != len(binary):
        raise InvalidRequest(
            f"the body holds {len(binary)} bytes after the JSON, but the inputs' "
            f"{BINARY_SIZE} parameters add up to {offset}"
        )
    wanted, binary_flags = _outputs(document.get("outputs"))
    binary_default = _flag(parameters.get("binary_data_output"), "binary_data_output")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest(f"'id' must be a string, got {_kind(request_id)}")
    return HttpInferRequest(
        request=InferRequest(arrays, datatypes, wanted, parameters),
        id=request_id,
        binary=binary_flags,
        binary_default=binary_default,
        timeout_us=_timeout(parameters.get("timeout")),
    )


def _object(text: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, nested too deep
        raise InvalidRequest(
            f"the body is not JSON ({error}); expected {what}, e.g. {EXAMPLE}"
        ) from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"expected a JSON object ({what}), got {_kind(document)}")
    return document


def read_object(body: bytes, what: str) -> dict[str, Any]:
    """An optional JSON object body (empty: ``{}``), e.g. of a load or an index request."""
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, nested too deep
        raise InvalidRequest(f"the body is not JSON ({error}); expected {what}") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"expected a JSON object ({what}), got {_kind(document)}")
    return document


def _known_keys(document: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    # A misspelt key ("input", "datatypes") is refused, not ignored: it would change the answer.
    for key in document:
        if key not in known:
            raise InvalidRequest(f"{where} has an unknown key '{key}' (known: {', '.join(known)})")


def plain_parameters(value: object, where: str) -> dict[str, object]:
    """A parameters object: keys to strings, numbers or booleans."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object, got {_kind(value)}")
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool)):
            raise InvalidRequest(
                f"{where}: '{key}' must be a string, a number or a boolean, got {_kind(item)}"
            )
    return dict(value)


def _input_fields(
    index: int, tensor: object
) -> tuple[str, Datatype, list[int], int | None, object]:
    """Name, datatype row, shape, binary size (None: JSON data) and data of one input."""
    if not isinstance(tensor, dict):
        raise InvalidRequest(f"inputs[{index}] must be a JSON object, got {_kind(tensor)}")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"inputs[{index}] needs a 'name' (a string)")
    _known_keys(tensor, _INPUT_KEYS, f"input '{name}'")
    kind = tensor.get("datatype")
    row = datatype(kind) if isinstance(kind, str) else None
    if row is None:
        raise InvalidInput(name, f"'datatype' must be one of {KNOWN}, got {json.dumps(kind)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) for dim in shape
    ):
        raise InvalidInput(name, f"'shape' must be a list of integers, got {json.dumps(shape)}")
    dims = list(convert.check_shape(name, shape))
    parameters = plain_parameters(tensor.get("parameters"), f"input '{name}': 'parameters'")
    size = parameters.get(BINARY_SIZE)
    if size is None:
        if "data" not in tensor:
            raise InvalidInput(
                name, f"needs 'data' (JSON values) or the parameter '{BINARY_SIZE}' (binary)"
            )
        return name, row, dims, None, tensor["data"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(name, f"'{BINARY_SIZE}' must be a byte count, got {json.dumps(size)}")
    if "data" in tensor:
        raise InvalidInput(name, f"has both 'data' and '{BINARY_SIZE}'; send one or the other")
    return name, row, dims, size, None


def _outputs(value: object) -> tuple[list[RequestedOutput], dict[str, bool]]:
    if value is None:
        return [], {}
    if not isinstance(value, list):
        raise InvalidRequest(f"'outputs' must be a list, got {_kind(value)}")
    wanted: list[RequestedOutput] = []
    binary: dict[str, bool] = {}
    for index, output in enumerate(value):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidRequest(f"outputs[{index}] must be an object with a 'name' (a string)")
        name = output["name"]
        _known_keys(output, _OUTPUT_KEYS, f"output '{name}'")
        parameters = plain_parameters(output.get("parameters"), f"output '{name}': 'parameters'")
        if "binary_data" in parameters:
            binary[name] = _flag(parameters["binary_data"], f"output '{name}': binary_data")
        wanted.append(RequestedOutput(name, parameters))
    return wanted, binary


def _flag(value: object, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what} must be true or false, got {json.dumps(value)}")
    return value


def _timeout(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(
            f"parameter 'timeout' must be microseconds (an integer >= 0), got {value}"
        )
    return value or None  # 0: none, as Triton reads it


# JSON values per datatype kind: what each takes, for the messages.
_TAKES: Final = {"b": "true or false", "i": "integers", "u": "integers >= 0", "f": "numbers"}
# The Python types json.loads gives for them (bool is no number here, though Python says so).
_TYPES: Final[dict[str, set[type]]] = {"b": {bool}, "i": {int}, "u": {int}, "f": {int, float}}


def _from_json(name: str, row: Datatype, shape: Sequence[int], data: object) -> np.ndarray:
    """The array of JSON ``data`` (flat or nested) for ``shape`` and ``row``."""
    count = math.prod(shape)
    values = _flatten(name, data)
    if len(values) != count:
        raise InvalidInput(
            name, f"'data' holds {len(values)} values, but shape {list(shape)} needs {count}"
        )
    if row.name == "BYTES":
        return _bytes_array(name, values).reshape(shape)
    kind = row.dtype.kind
    # The Python types present, found in C; only a misfit is looked for value by value.
    if not set(map(type, values)) <= _TYPES[kind]:
        index, value = next((i, v) for i, v in enumerate(values) if not _fits(kind, v))
        raise InvalidInput(
            name, f"{row.name} takes {_TAKES[kind]}; 'data' value {index} is {json.dumps(value)}"
        )
    if kind in "iu":
        info = np.iinfo(row.dtype)
        low, high = min(values, default=0), max(values, default=0)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(
                name, f"value {bad} is out of range for {row.name} ({info.min}..{info.max})"
            )
    try:
        with np.errstate(over="ignore"):  # 1e300 as FP32 is inf; the model's check says so
            return np.array(values, dtype=row.dtype).reshape(shape)
    except OverflowError:  # an integer of 400 digits for a float datatype
        raise InvalidInput(name, f"a 'data' value is too large for {row.name}") from None


def _flatten(name: str, data: object) -> list[Any]:
    if not isinstance(data, list):
        return [data]  # a lone value: shape [] or [1]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
        if len(stack) > 64:
            raise InvalidInput(name, "'data' is nested more than 64 lists deep")
    return flat


def _fits(kind: str, value: object) -> bool:
    if kind == "b":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False  # true is no number here, though Python calls it one
    if kind == "f":
        return isinstance(value, (int, float))
    return isinstance(value, int)


def _bytes_array(name: str, values: Sequence[object]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidInput(
                name, f"BYTES takes strings in JSON; 'data' value {index} is {json.dumps(value)}"
            )
        array[index] = value.encode("utf-8")
    return array


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


# ------------------------------------------------------------------ answers


def encode_response(
    model: str,
    version: str,
    outputs: Mapping[str, np.ndarray],
    decoded: HttpInferRequest,
) -> EncodedResponse:
    """The answer's body: JSON, then the binary outputs in the order they are listed."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        if decoded.wants_binary(name):
            tensor, raw = convert.output_tensor(name, array, raw=True)
            assert raw is not None  # raw=True always gives bytes
            chunks.append(raw)
            tensors.append(
                {
                    "name": name,
                    "datatype": tensor.datatype,
                    "shape": list(array.shape),
                    "parameters": {BINARY_SIZE: len(raw)},
                }
            )
        else:
            tensors.append(_json_tensor(name, array))
    answer: dict[str, Any] = {"model_name": model, "model_version": version}
    if decoded.id:
        answer["id"] = decoded.id
    answer["outputs"] = tensors
    text = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return EncodedResponse(text, None)
    return EncodedResponse(b"".join([text, *chunks]), len(text))


def _json_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    row = from_numpy(array.dtype)
    if row is None:
        raise InvalidOutput(name, f"NumPy dtype {array.dtype} has no protocol datatype")
    data: list[Any] = array.ravel().tolist()
    if row.name == "BYTES":
        try:
            data = [value if isinstance(value, str) else value.decode("utf-8") for value in data]
        except (UnicodeDecodeError, AttributeError):
            raise InvalidOutput(
                name, "BYTES values that are not UTF-8 text need binary_data: true"
            ) from None
    return {"name": name, "datatype": row.name, "shape": list(array.shape), "data": data}
