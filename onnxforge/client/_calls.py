"""Every client call as data: the RPC, its request and how its answer is read.

The blocking and the asyncio client differ only in how they wait for an answer; what they
send and what they make of the answer is built here, once, as a :class:`Call`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from onnxforge.client.errors import InferenceServerError, InvalidResponse
from onnxforge.protocol import headers as onnxforge_headers
from onnxforge.protocol import tensors
from onnxforge.protocol.generated import inference_pb2 as pb

T = TypeVar("T")
Headers = Mapping[str, str]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One RPC: the stub method, its request, and the answer made of response and headers."""

    method: str
    request: Any
    answer: Callable[[Any, Headers], T]
    headers: bool = False  # whether ``answer`` reads the response headers


@dataclass(frozen=True)
class ModelInfo:
    """A model's metadata with what onnxforge adds in headers: variant, accuracy, spec hash.

    ``variant``, ``accuracy`` and ``spec_sha256`` are ``None`` when the server does not send
    them (another server, or a file without the record).
    """

    metadata: pb.ModelMetadataResponse
    variant: str | None = None
    accuracy: dict[str, Any] | None = None
    spec_sha256: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.name)

    @property
    def versions(self) -> list[str]:
        return list(self.metadata.versions)


# ----------------------------------------------------------------------- inference


def infer_request(
    model: str,
    inputs: Mapping[str, npt.ArrayLike],
    outputs: Sequence[str] = (),
    version: str = "",
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A request carrying every input as raw little-endian bytes.

    Raises ``ValueError`` naming the input when an array has no protocol datatype.
    """
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    encoded, raw = tensors.encode_tensors(tensors.INPUTS, inputs, raw=True)
    request.inputs.extend(encoded)
    request.raw_input_contents.extend(raw)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a response as an array (raw or typed contents).

    Raises :class:`~onnxforge.client.errors.InvalidResponse` naming the output at fault.
    """
    try:
        return tensors.decode_tensors(
            tensors.OUTPUTS, response.outputs, response.raw_output_contents
        )
    except tensors.TensorError as error:
        raise InvalidResponse(error.reason, error.name) from None
    except tensors.MessageError as error:
        raise InvalidResponse(error.reason) from None


def infer(
    model: str, inputs: Mapping[str, npt.ArrayLike], outputs: Sequence[str], version: str
) -> Call[dict[str, np.ndarray]]:
    request = infer_request(model, inputs, outputs, version)
    return Call("ModelInfer", request, lambda response, _: decode_outputs(response))


@dataclass(frozen=True)
class StreamResult:
    """One answer of a stream (``stream``): the outputs, or the error for that request.

    ``request_id`` is the request's position in what was sent (``"0"``, ``"1"``, ...). A
    failed request does not end the stream; its error's code is ``UNKNOWN``, as the
    protocol's stream answer carries a message but no status.
    """

    request_id: str
    outputs: dict[str, np.ndarray] | None = None
    error: InferenceServerError | None = None

    def result(self) -> dict[str, np.ndarray]:
        """The outputs; raises the request's error when it failed."""
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


def stream_result(response: pb.ModelStreamInferResponse) -> StreamResult:
    request_id = str(response.infer_response.id)
    if response.error_message:
        failed = InferenceServerError("UNKNOWN", response.error_message)
        return StreamResult(request_id, error=failed)
    return StreamResult(request_id, outputs=decode_outputs(response.infer_response))


# ------------------------------------------------------------------ health, metadata


def live() -> Call[bool]:
    return Call("ServerLive", pb.ServerLiveRequest(), lambda response, _: bool(response.live))


def ready(model: str | None, version: str) -> Call[bool]:
    if model is None:
        return Call("ServerReady", pb.ServerReadyRequest(), lambda r, _: bool(r.ready))
    request = pb.ModelReadyRequest(name=model, version=version)
    return Call("ModelReady", request, lambda response, _: bool(response.ready))


def server_metadata() -> Call[pb.ServerMetadataResponse]:
    return Call("ServerMetadata", pb.ServerMetadataRequest(), lambda response, _: response)


def metadata(model: str, version: str) -> Call[pb.ModelMetadataResponse]:
    request = pb.ModelMetadataRequest(name=model, version=version)
    return Call("ModelMetadata", request, lambda response, _: response)


def metadata_with_headers(
    model: str, version: str
) -> Call[tuple[pb.ModelMetadataResponse, dict[str, str]]]:
    request = pb.ModelMetadataRequest(name=model, version=version)
    return Call("ModelMetadata", request, lambda r, headers: (r, dict(headers)), headers=True)


def model_info(model: str, version: str) -> Call[ModelInfo]:
    request = pb.ModelMetadataRequest(name=model, version=version)
    return Call("ModelMetadata", request, _model_info, headers=True)


def _model_info(response: pb.ModelMetadataResponse, headers: Headers) -> ModelInfo:
    accuracy = None
    text = headers.get(onnxforge_headers.ACCURACY)
    if text is not None:
        try:
            accuracy = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidResponse(
                f"header {onnxforge_headers.ACCURACY} is not JSON: {error}"
            ) from None
        if not isinstance(accuracy, dict):
            raise InvalidResponse(f"header {onnxforge_headers.ACCURACY} is not a JSON object")
    return ModelInfo(
        metadata=response,
        variant=headers.get(onnxforge_headers.VARIANT),
        accuracy=accuracy,
        spec_sha256=headers.get(onnxforge_headers.SPEC_SHA256),
        headers=dict(headers),
    )


def model_config(model: str, version: str) -> Call[dict[str, Any]]:
    request = pb.ModelConfigRequest(name=model, version=version)
    return Call("ModelConfig", request, lambda response, _: message_dict(response.config))


def message_dict(message: Message) -> dict[str, Any]:
    """A message as plain data in protobuf's JSON shape with the .proto's field names, but
    64-bit integers as numbers (JSON's strings): Triton's HTTP ``ModelConfig`` answer.

    Fields without presence appear with their defaults; a message field or a oneof member
    only when set.
    """
    found: dict[str, Any] = {}
    for described in message.DESCRIPTOR.fields:
        single_message = described.type == FieldDescriptor.TYPE_MESSAGE and not _repeated(described)
        if (single_message or described.containing_oneof is not None) and not message.HasField(
            described.name
        ):
            continue
        value = getattr(message, described.name)
        if described.message_type is not None and described.message_type.GetOptions().map_entry:
            entry = described.message_type.fields_by_name["value"]
            found[described.name] = {key: _plain(entry, item) for key, item in value.items()}
        elif _repeated(described):
            found[described.name] = [_plain(described, item) for item in value]
        else:
            found[described.name] = _plain(described, value)
    return found


def _repeated(field: Any) -> bool:  # Any: the stubs type upb's descriptors apart
    known = getattr(field, "is_repeated", None)  # protobuf 7 has no ``label`` any more
    if known is not None:
        return bool(known)
    return getattr(field, "label", None) == 3  # LABEL_REPEATED, before ``is_repeated``


def _plain(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_dict(value)
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    return value


# ---------------------------------------------------------- repository, statistics


def repository_index(ready: bool) -> Call[list[pb.RepositoryIndexResponse.ModelIndex]]:
    request = pb.RepositoryIndexRequest(ready=ready)
    return Call("RepositoryIndex", request, lambda response, _: list(response.models))


def load(model: str, config: Mapping[str, Any] | str | None) -> Call[None]:
    """A load of ``model``; ``config`` (a Triton ModelConfig, as a mapping or JSON text)
    replaces its ``config.pbtxt`` for this load."""
    request = pb.RepositoryModelLoadRequest(model_name=model)
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(dict(config))
        request.parameters["config"].string_param = text
    return Call("RepositoryModelLoad", request, lambda response, _: None)


def unload(model: str) -> Call[None]:
    request = pb.RepositoryModelUnloadRequest(model_name=model)
    return Call("RepositoryModelUnload", request, lambda response, _: None)


def statistics(model: str, version: str) -> Call[list[pb.ModelStatistics]]:
    request = pb.ModelStatisticsRequest(name=model, version=version)
    return Call("ModelStatistics", request, lambda response, _: list(response.model_stats))
