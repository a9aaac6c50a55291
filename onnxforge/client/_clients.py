"""The blocking client and its asyncio twin: the same methods, each one line.

What a method sends and how its answer is read is a :class:`~onnxforge.client._calls.Call`
built in ``_calls``; a class only waits for the answer (``_run``) and turns a failed call
into the typed error of :mod:`onnxforge.client.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from onnxforge.client import _calls as calls
from onnxforge.client._calls import Call, ModelInfo, StreamResult
from onnxforge.client.connection import Connection, header_dict, open_channel, status_error
from onnxforge.client.errors import InferenceServerError
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc

__all__ = ["AsyncInferenceClient", "InferenceClient"]

T = TypeVar("T")
Config = Mapping[str, Any] | str | None
ModelIndex = pb.RepositoryIndexResponse.ModelIndex
Inputs = Mapping[str, npt.ArrayLike]


class _Client:
    """The channel and stub both classes hold."""

    def __init__(self, url: str, aio: bool, options: dict[str, Any]) -> None:
        self.connection = Connection(url, **options)
        self._metadata = self.connection.metadata()
        self._channel = open_channel(self.connection, aio=aio)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def _failure(self, error: grpc.RpcError) -> InferenceServerError:
        return status_error(error, self.connection)


class _Requests:
    """A stream's requests, encoded as gRPC asks for them; an input that cannot be encoded
    ends the requests and is raised once the answers so far are in (not inside gRPC)."""

    def __init__(self, model: str, outputs: Sequence[str], version: str) -> None:
        self.model, self.outputs, self.version = model, outputs, version
        self.refused: ValueError | None = None
        self.sent = 0

    def encode(self, inputs: Inputs) -> pb.ModelInferRequest | None:
        try:
            request = calls.infer_request(
                self.model, inputs, self.outputs, self.version, str(self.sent)
            )
        except ValueError as error:
            self.refused = error
            return None
        self.sent += 1
        return request

    def of(self, requests: Iterable[Inputs]) -> Iterator[pb.ModelInferRequest]:
        for inputs in requests:
            request = self.encode(inputs)
            if request is None:
                return
            yield request

    async def of_async(
        self, requests: Iterable[Inputs] | AsyncIterable[Inputs]
    ) -> AsyncIterator[pb.ModelInferRequest]:
        if not isinstance(requests, AsyncIterable):
            for encoded in self.of(requests):
                yield encoded
            return
        async for inputs in requests:
            request = self.encode(inputs)
            if request is None:
                return
            yield request


class InferenceClient(_Client):
    """Blocking client. Use as a context manager or call ``close()``.

    Options (keywords): ``tls_ca``, ``tls_cert``, ``tls_key``, ``token``,
    ``max_message_bytes`` -- the fields of :class:`~onnxforge.client.Connection`.
    """

    def __init__(self, url: str = "127.0.0.1:8001", **options: Any) -> None:
        super().__init__(url, False, options)

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _run(self, call: Call[T], timeout: float | None = None) -> T:
        method = getattr(self._stub, call.method)
        try:
            if call.headers:
                response, rpc = method.with_call(
                    call.request, timeout=timeout, metadata=self._metadata
                )
                headers = header_dict(rpc.initial_metadata())
            else:
                response = method(call.request, timeout=timeout, metadata=self._metadata)
                headers = {}
        except grpc.RpcError as error:
            failure: InferenceServerError = self._failure(error)
        else:
            return call.answer(response, headers)
        raise failure  # outside the handler: no gRPC exception in its context

    def live(self) -> bool:
        return self._run(calls.live())

    def ready(self, model: str | None = None, version: str = "") -> bool:
        return self._run(calls.ready(model, version))

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return self._run(calls.server_metadata())

    def metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        return self._run(calls.metadata(model, version))

    def metadata_with_headers(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> tuple[pb.ModelMetadataResponse, dict[str, str]]:
        """The metadata and its response headers (onnxforge's: variant, accuracy, spec hash)."""
        return self._run(calls.metadata_with_headers(model, version), timeout)

    def model_info(self, model: str, version: str = "", timeout: float | None = None) -> ModelInfo:
        """The metadata with the variant, recorded accuracy and spec hash read from headers."""
        return self._run(calls.model_info(model, version), timeout)

    def model_config(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> dict[str, Any]:
        """The model's configuration as it serves, in Triton's JSON ``ModelConfig`` shape
        (what ``tritonclient.http``'s ``get_model_config`` returns)."""
        return self._run(calls.model_config(model, version), timeout)

    def repository_index(
        self, ready: bool = False, timeout: float | None = None
    ) -> list[ModelIndex]:
        """Every model (and version) the server knows, with its state and reason."""
        return self._run(calls.repository_index(ready), timeout)

    def load(self, model: str, config: Config = None, timeout: float | None = None) -> None:
        """Load (or reload) ``model``; ``config`` (a Triton ModelConfig) replaces its file's."""
        self._run(calls.load(model, config), timeout)

    def unload(self, model: str, timeout: float | None = None) -> None:
        self._run(calls.unload(model), timeout)

    def statistics(
        self, model: str = "", version: str = "", timeout: float | None = None
    ) -> list[pb.ModelStatistics]:
        """Counts and durations per loaded model version (all of them when ``model`` is "")."""
        return self._run(calls.statistics(model, version), timeout)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        outputs: Sequence[str] = (),
        version: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Every output (or those named) of ``model`` for ``inputs``, as arrays."""
        return self._run(calls.infer(model, inputs, outputs, version), timeout)

    def stream(
        self,
        model: str,
        requests: Iterable[Inputs],
        outputs: Sequence[str] = (),
        version: str = "",
        timeout: float | None = None,
    ) -> Iterator[StreamResult]:
        """Many inferences over one call (ModelStreamInfer): one :class:`StreamResult` per
        request, in order, as they come; a failed request does not end the stream."""
        sending = _Requests(model, outputs, version)
        answers = self._stub.ModelStreamInfer(
            sending.of(requests), timeout=timeout, metadata=self._metadata
        )
        try:
            for response in answers:
                yield calls.stream_result(response)
        except grpc.RpcError as error:
            failure: Exception = self._failure(error)
        else:
            if sending.refused is None:
                return
            failure = sending.refused
        raise failure  # outside the handler: no gRPC exception in its context


class AsyncInferenceClient(_Client):
    """The asyncio twin of :class:`InferenceClient`: the same methods, awaited."""

    def __init__(self, url: str = "127.0.0.1:8001", **options: Any) -> None:
        super().__init__(url, True, options)

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _run(self, call: Call[T], timeout: float | None = None) -> T:
        rpc = getattr(self._stub, call.method)(
            call.request, timeout=timeout, metadata=self._metadata
        )
        try:
            response = await rpc
            headers = header_dict(await rpc.initial_metadata()) if call.headers else {}
        except grpc.RpcError as error:
            failure: InferenceServerError = self._failure(error)
        else:
            return call.answer(response, headers)
        raise failure  # outside the handler: no gRPC exception in its context

    async def live(self) -> bool:
        return await self._run(calls.live())

    async def ready(self, model: str | None = None, version: str = "") -> bool:
        return await self._run(calls.ready(model, version))

    async def server_metadata(self) -> pb.ServerMetadataResponse:
        return await self._run(calls.server_metadata())

    async def metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        return await self._run(calls.metadata(model, version))

    async def metadata_with_headers(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> tuple[pb.ModelMetadataResponse, dict[str, str]]:
        return await self._run(calls.metadata_with_headers(model, version), timeout)

    async def model_info(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> ModelInfo:
        return await self._run(calls.model_info(model, version), timeout)

    async def model_config(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> dict[str, Any]:
        return await self._run(calls.model_config(model, version), timeout)

    async def repository_index(
        self, ready: bool = False, timeout: float | None = None
    ) -> list[ModelIndex]:
        return await self._run(calls.repository_index(ready), timeout)

    async def load(self, model: str, config: Config = None, timeout: float | None = None) -> None:
        await self._run(calls.load(model, config), timeout)

    async def unload(self, model: str, timeout: float | None = None) -> None:
        await self._run(calls.unload(model), timeout)

    async def statistics(
        self, model: str = "", version: str = "", timeout: float | None = None
    ) -> list[pb.ModelStatistics]:
        return await self._run(calls.statistics(model, version), timeout)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        outputs: Sequence[str] = (),
        version: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        return await self._run(calls.infer(model, inputs, outputs, version), timeout)

    async def stream(
        self,
        model: str,
        requests: Iterable[Inputs] | AsyncIterable[Inputs],
        outputs: Sequence[str] = (),
        version: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult]:
        """As :meth:`InferenceClient.stream`; ``requests`` may be an async iterable."""
        sending = _Requests(model, outputs, version)
        answers = self._stub.ModelStreamInfer(
            sending.of_async(requests), timeout=timeout, metadata=self._metadata
        )
        try:
            async for response in answers:
                yield calls.stream_result(response)
        except grpc.RpcError as error:
            failure: Exception = self._failure(error)
        else:
            if sending.refused is None:
                return
            failure = sending.refused
        raise failure  # outside the handler: no gRPC exception in its context
