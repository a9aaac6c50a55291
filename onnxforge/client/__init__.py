"""A NumPy-in, NumPy-out client for any Open Inference Protocol server (sync and asyncio).

    >>> client = InferenceClient("127.0.0.1:8001")
    >>> client.infer("digits-mlp", {"x": rows})["probabilities"]

Requests carry raw little-endian bytes (no per-element encoding); TLS and a bearer token
are options of the connection. The sync and async classes share the request building and
response decoding below and differ only in how they wait.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server import convert

__all__ = ["AsyncInferenceClient", "Connection", "InferenceClient"]


@dataclass(frozen=True)
class Connection:
    """Where and how to connect: address, optional TLS files and bearer token."""

    url: str = "127.0.0.1:8001"
    tls_ca: Path | None = None  # trust this CA (enables TLS)
    tls_cert: Path | None = None  # client certificate for mutual TLS
    tls_key: Path | None = None
    token: str | None = None  # sent as "authorization: Bearer <token>"
    max_message_bytes: int = 64 * 1024 * 1024

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None and self.tls_cert is None:
            return None
        return grpc.ssl_channel_credentials(
            _read(self.tls_ca), _read(self.tls_key), _read(self.tls_cert)
        )

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path else None


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] = (),
    version: str = "",
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A request carrying every input as raw little-endian bytes."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, value in inputs.items():
        array = np.asarray(value)
        row = convert.from_numpy(array.dtype)
        if row is None:
            raise TypeError(f"input '{name}': dtype {array.dtype} has no protocol datatype")
        tensor, data = convert.output_tensor(name, array, raw=True)
        request.inputs.add(name=name, datatype=tensor.datatype, shape=list(array.shape))
        request.raw_input_contents.append(data or b"")
    for name in outputs:
        request.outputs.add(name=name)
    return request


def decode(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a response as an array (raw or typed contents)."""
    raw = response.raw_output_contents
    return {
        tensor.name: convert.input_array(tensor, raw[index] if raw else None)
        for index, tensor in enumerate(response.outputs)
    }


def _channel(connection: Connection, aio: bool) -> Any:
    module = grpc.aio if aio else grpc
    credentials = connection.credentials()
    if credentials is None:
        return module.insecure_channel(connection.url, options=connection.options())
    return module.secure_channel(connection.url, credentials, options=connection.options())


class InferenceClient:
    """Blocking client. Use as a context manager or call ``close()``."""

    def __init__(self, url: str = "127.0.0.1:8001", **options: Any) -> None:
        self.connection = Connection(url, **options)
        self._channel = _channel(self.connection, aio=False)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        return getattr(self._stub, method)(
            request, timeout=timeout, metadata=self.connection.metadata()
        )

    def live(self) -> bool:
        return bool(self._call("ServerLive", pb.ServerLiveRequest()).live)

    def ready(self, model: str | None = None, version: str = "") -> bool:
        if model is None:
            return bool(self._call("ServerReady", pb.ServerReadyRequest()).ready)
        return bool(
            self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version)).ready
        )

    def metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=model, version=version)
        response: pb.ModelMetadataResponse = self._call("ModelMetadata", request)
        return response

    def metadata_with_headers(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> tuple[pb.ModelMetadataResponse, dict[str, str]]:
        """The metadata and its response headers (onnxforge's: variant, accuracy, spec hash)."""
        request = pb.ModelMetadataRequest(name=model, version=version)
        response, call = self._stub.ModelMetadata.with_call(
            request, timeout=timeout, metadata=self.connection.metadata()
        )
        return response, {key: str(value) for key, value in call.initial_metadata()}

    def repository_index(
        self, ready: bool = False, timeout: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """Every model (and version) the server knows, with its state and reason."""
        request = pb.RepositoryIndexRequest(ready=ready)
        return list(self._call("RepositoryIndex", request, timeout).models)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] = (),
        version: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        request = infer_request(model, inputs, outputs, version)
        return decode(self._call("ModelInfer", request, timeout))


class AsyncInferenceClient:
    """The asyncio twin of ``InferenceClient``: the same methods, awaited."""

    def __init__(self, url: str = "127.0.0.1:8001", **options: Any) -> None:
        self.connection = Connection(url, **options)
        self._channel = _channel(self.connection, aio=True)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        return await getattr(self._stub, method)(
            request, timeout=timeout, metadata=self.connection.metadata()
        )

    async def live(self) -> bool:
        return bool((await self._call("ServerLive", pb.ServerLiveRequest())).live)

    async def ready(self, model: str | None = None, version: str = "") -> bool:
        if model is None:
            return bool((await self._call("ServerReady", pb.ServerReadyRequest())).ready)
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool((await self._call("ModelReady", request)).ready)

    async def metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=model, version=version)
        response: pb.ModelMetadataResponse = await self._call("ModelMetadata", request)
        return response

    async def metadata_with_headers(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> tuple[pb.ModelMetadataResponse, dict[str, str]]:
        request = pb.ModelMetadataRequest(name=model, version=version)
        call = self._stub.ModelMetadata(
            request, timeout=timeout, metadata=self.connection.metadata()
        )
        response: pb.ModelMetadataResponse = await call
        return response, {key: str(value) for key, value in await call.initial_metadata()}

    async def repository_index(
        self, ready: bool = False, timeout: float | None = None
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        request = pb.RepositoryIndexRequest(ready=ready)
        return list((await self._call("RepositoryIndex", request, timeout)).models)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] = (),
        version: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        request = infer_request(model, inputs, outputs, version)
        return decode(await self._call("ModelInfer", request, timeout))
