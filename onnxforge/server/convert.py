"""Protocol <-> NumPy for the server: requests decoded, responses encoded, errors as statuses.

The table of datatypes is :mod:`onnxforge.protocol.datatypes` and the tensor codec is
:mod:`onnxforge.protocol.tensors`, shared with the client. This module is the server's
use of them: it decodes a request's *inputs* and encodes a response's *outputs*, and turns
the codec's errors into the server's: a bad input raises
:class:`~onnxforge.server.errors.InvalidInput` (``INVALID_ARGUMENT``), a malformed request
``InvalidRequest``, an output the protocol cannot carry ``InvalidOutput`` (``INTERNAL``).
Each names the tensor and what was expected and received.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from onnxforge.protocol import tensors
from onnxforge.protocol.datatypes import (
    DATATYPES,
    Datatype,
    datatype,
    from_numpy,
    from_onnx,
    from_ort,
)
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.tensors import (
    INPUTS,
    MAX_DIMS,
    MAX_ELEMENTS,
    OUTPUTS,
    InputTensor,
    MessageError,
    OutputTensor,
    TensorError,
)
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


def check_shape(name: str, shape: Iterable[int]) -> tuple[int, ...]:
    """Validate input ``name``'s dimensions: at most MAX_DIMS, each >= 0, few enough elements."""
    try:
        return tensors.check_shape(INPUTS, name, shape)
    except TensorError as error:
        raise InvalidInput(error.name, error.reason) from None


def input_arrays(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """Decode every input of ``request`` (raw or typed) into arrays keyed by input name."""
    try:
        return tensors.decode_tensors(INPUTS, request.inputs, request.raw_input_contents)
    except TensorError as error:
        raise InvalidInput(error.name, error.reason) from None
    except MessageError as error:
        raise InvalidRequest(error.reason) from None


def input_array(tensor: InputTensor, raw: bytes | None) -> np.ndarray:
    """Decode one input tensor: from ``raw`` bytes when given, else from its typed contents.

    Raw numeric data becomes a read-only view of ``raw`` (no copy), shaped as the tensor.
    """
    try:
        return tensors.decode_tensor(INPUTS, tensor, raw)
    except TensorError as error:
        raise InvalidInput(error.name, error.reason) from None


def output_tensors(
    outputs: Mapping[str, npt.ArrayLike], raw: bool
) -> tuple[list[OutputTensor], list[bytes]]:
    """Encode every output; raw when ``raw`` or when some output has no typed field (FP16).

    The protocol forbids mixing raw and typed outputs in one response, hence one choice
    for all. Returns the tensors and the ``raw_output_contents`` entries (empty if typed).
    """
    try:
        return tensors.encode_tensors(OUTPUTS, outputs, raw)
    except TensorError as error:
        raise InvalidOutput(error.name, error.reason) from None


def infer_response(
    request: pb.ModelInferRequest, model: str, version: str, outputs: Mapping[str, npt.ArrayLike]
) -> pb.ModelInferResponse:
    """The answer to ``request``: its outputs raw when its inputs were (as clients expect)."""
    encoded, raw = output_tensors(outputs, raw=bool(request.raw_input_contents))
    return pb.ModelInferResponse(
        model_name=model,
        model_version=version,
        id=request.id,
        outputs=encoded,
        raw_output_contents=raw,
    )


def output_tensor(name: str, array: npt.ArrayLike, raw: bool) -> tuple[OutputTensor, bytes | None]:
    """Encode one output as (tensor message, little-endian raw bytes or ``None`` if typed)."""
    try:
        return tensors.encode_tensor(OUTPUTS, name, array, raw)
    except TensorError as error:
        raise InvalidOutput(error.name, error.reason) from None
