"""The KServe v2 / Open Inference Protocol over gRPC: parse, call the data plane, convert.

The servicer holds no state and makes no decision of its own: every answer comes from the
data plane (``server.dataplane``); messages are read and written by ``server.convert``
(tensors) and ``server.messages`` (the rest). Every ``ServingError`` becomes its gRPC
status here, by one table, :data:`GRPC_STATUS`; anything else is a bug, logged with its
traceback and answered INTERNAL without internals.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server import convert, messages
from onnxforge.server.dataplane import DataPlaneAPI
from onnxforge.server.errors import Code, ServingError

log = logging.getLogger("onnxforge.server")
SERVICE_NAME = "inference.GRPCInferenceService"
INTERNAL_MESSAGE = "internal error (see the server log)"

#: The gRPC status of every error code (the HTTP statuses are ``errors.HTTP_STATUS``).
GRPC_STATUS: Final[dict[Code, grpc.StatusCode]] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}

Response = TypeVar("Response")


def _answers(
    method: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Map ServingError to its status; log anything else and answer INTERNAL."""

    @functools.wraps(method)
    async def wrapper(
        self: InferenceService, request: Any, context: grpc.aio.ServicerContext
    ) -> Response:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            return await method(self, request, context)
        except ServingError as error:
            await context.abort(GRPC_STATUS[error.code], error.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        raise AssertionError("unreachable")  # abort() always raises

    return wrapper


class Undecodable:
    """A request whose bytes are not the message the method takes."""

    def __init__(self, kind: str, error: Exception) -> None:
        self.message = f"the request is not a valid {kind} message: {error}"


def lenient(message_class: Any) -> Callable[[bytes], Any]:
    """A deserializer that hands bad bytes to the servicer instead of failing inside gRPC."""

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return Undecodable(message_class.DESCRIPTOR.name, error)

    return parse


def register(service: InferenceService, server: grpc.aio.Server) -> None:
    """Add ``service`` to ``server``: the generated handlers, with lenient deserializers."""
    descriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in descriptor.methods:
        request, response = (
            getattr(pb, method.input_type.name),
            getattr(pb, method.output_type.name),
        )
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(service, method.name),
            request_deserializer=lenient(request),
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Answers every RPC of ``inference.GRPCInferenceService`` from a data plane."""

    def __init__(self, plane: DataPlaneAPI) -> None:
        self.plane = plane

    # ------------------------------------------------------------------ health

    @_answers
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=await self.plane.live())

    @_answers
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.plane.server_ready())

    @_answers
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        ready = await self.plane.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    # ------------------------------------------------------------------ metadata

    @_answers
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return messages.server_metadata(await self.plane.server_metadata())

    @_answers
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        metadata = await self.plane.model_metadata(request.name, request.version)
        # The protocol's message has no free-form fields: these travel as headers.
        await context.send_initial_metadata(metadata.headers())
        return messages.model_metadata(metadata)

    @_answers
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        # The data plane answers Triton's JSON shape, whose field names are the message's.
        found = await self.plane.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=json_format.ParseDict(found, pb.ModelConfig()))

    # ------------------------------------------------------------------ inference

    async def _infer(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> pb.ModelInferResponse:
        async with self.plane.inference(request.model_name, request.model_version) as call:
            inputs = convert.input_arrays(request)
            outputs = await call.run(messages.infer_request(request, inputs), deadline)
            return convert.infer_response(request, call.model, call.version, outputs)

    @_answers
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        return await self._infer(request, deadline)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Requests are served one after the other. Once the server drains, the request in
        # progress is answered and the stream then ends with UNAVAILABLE, also while it
        # waits for its next request (server.drain).
        drain = self.plane.drain
        requests = aiter(request_iterator)
        with drain.stream():
            while True:
                try:
                    request = await drain.next_request(requests)
                except ServingError as error:
                    await context.abort(GRPC_STATUS[error.code], error.message)
                if request is None:
                    return
                if isinstance(request, Undecodable):
                    yield pb.ModelStreamInferResponse(error_message=request.message)
                    continue
                try:
                    response = await self._infer(request, None)
                except Exception as error:
                    if isinstance(error, ServingError):
                        message = error.message
                    else:
                        log.exception("unexpected error in ModelStreamInfer")
                        message = INTERNAL_MESSAGE
                    # The id tells a client which of its requests failed (as Triton does).
                    yield pb.ModelStreamInferResponse(
                        error_message=message, infer_response=pb.ModelInferResponse(id=request.id)
                    )
                    continue
                yield pb.ModelStreamInferResponse(infer_response=response)

    # ------------------------------------------------------------------ repository

    @_answers
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        return messages.repository_index(await self.plane.index(ready_only=request.ready))

    @_answers
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        # KServe's own proto puts the model name in field 1 (our repository_name).
        name = request.model_name or request.repository_name
        await self.plane.load(name, messages.values(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_answers
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.plane.unload(request.model_name or request.repository_name)
        return pb.RepositoryModelUnloadResponse()

    @_answers
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        found = await self.plane.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(
            model_stats=[messages.model_statistics(part) for part in found]
        )
