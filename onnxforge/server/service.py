"""The KServe v2 / Open Inference Protocol servicer: parse, call, convert -- nothing more.

Every ``ServingError`` becomes its gRPC status here, in one place; anything else is a bug,
logged with its traceback and answered INTERNAL without internals.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer  # what grpc_health.v1.health.aio names

from onnxforge._version import __version__
from onnxforge.builder.metadata import SPEC_SHA256
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server import convert, validate
from onnxforge.server.errors import ServingError, Unavailable
from onnxforge.server.overrides import parse_load_parameters
from onnxforge.server.peers import Peers, forwarded, merge_statistics
from onnxforge.server.registry import PLATFORM, Registry, State
from onnxforge.server.stats import ModelStats, Statistics

log = logging.getLogger("onnxforge.server")
SERVICE_NAME = "inference.GRPCInferenceService"
# SERVING while the process runs, whatever the models do: for liveness probes, which
# should not restart a server because one model failed to load.
LIVE_SERVICE = "onnxforge.Live"
EXTENSIONS = ["model_repository", "statistics", "model_repository(unload_dependents)"]

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
            await context.abort(error.code, error.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        raise AssertionError("unreachable")  # abort() always raises

    return wrapper


class Undecodable:
    """A request whose bytes are not the message the method takes."""

    def __init__(self, kind: str, error: Exception) -> None:
        self.message = f"the request is not a valid {kind} message: {error}"


def _lenient(message_class: Any) -> Callable[[bytes], Any]:
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
            request_deserializer=_lenient(request),
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Answers every RPC of ``inference.GRPCInferenceService`` from a ``Registry``."""

    def __init__(
        self, registry: Registry, statistics: Statistics, health: HealthServicer | None = None
    ) -> None:
        self.registry = registry
        self.statistics = statistics
        self.health = health
        self.draining = False
        self.peers: Peers | None = None  # the other workers, with --workers N
        self.max_rows = 65536  # rows per request
        self.in_flight = 0  # requests between arrival and answer
        self.cut_off = 0  # requests cancelled while being served (client gone, or shutdown)
        # The drain (server.app.Running.stop): what it waits for and what it reports.
        self.answered_draining = 0  # requests answered after draining began
        self.refused_draining = 0  # calls answered UNAVAILABLE because the server drains
        self.last_activity_ns = time.monotonic_ns()  # an inference request arrived or ended
        self.open_streams = 0  # ModelStreamInfer calls not yet ended
        self.idle_streams: set[asyncio.Task[Any]] = set()  # streams awaiting their next request

    def ready(self) -> bool:
        """Every model is ready, except those unloaded on purpose (as Triton counts it)."""
        return not self.draining and all(
            entry.state == State.READY or entry.deliberate
            for entry in self.registry.entries.values()
        )

    async def sync_health(self) -> None:
        """gRPC health ("" for the whole server, one name per model) and the loaded gauge."""
        if self.statistics.metrics is not None:
            ready = sum(entry.state == State.READY for entry in self.registry.entries.values())
            self.statistics.metrics.models_loaded.set(ready)
        if self.health is None:
            return
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        await self.health.set(LIVE_SERVICE, not_serving if self.draining else serving)
        await self.health.set("", serving if self.ready() else not_serving)
        await self.health.set(SERVICE_NAME, serving if self.ready() else not_serving)
        for name, entry in self.registry.entries.items():
            ok = entry.state == State.READY and not self.draining
            await self.health.set(name, serving if ok else not_serving)

    # ------------------------------------------------------------------ health

    @_answers
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_answers
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        ready = self.ready()
        if ready and self.peers is not None and not forwarded(context, self.peers.token):
            ready = await self.peers.ready()
        return pb.ServerReadyResponse(ready=ready)

    @_answers
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        try:
            self.registry.get(request.name, request.version)
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        ready = not self.draining
        if ready and self.peers is not None and not forwarded(context, self.peers.token):
            ready = await self.peers.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    # ------------------------------------------------------------------ metadata

    @_answers
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="onnxforge", version=__version__, extensions=EXTENSIONS
        )

    @_answers
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        version = self.registry.get(request.name, request.version)
        entry = self.registry.entries[request.name]
        # The protocol's metadata message has no free-form fields: precision and measured
        # accuracy travel as response headers.
        headers = [("x-onnxforge-variant", version.variant)]
        if version.accuracy is not None:
            headers.append(("x-onnxforge-accuracy", json.dumps(version.accuracy, sort_keys=True)))
        if SPEC_SHA256 in version.props:  # the spec this version was built from
            headers.append(("x-onnxforge-spec-sha256", version.props[SPEC_SHA256]))
        await context.send_initial_metadata(headers)

        def tensors(items: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=t.datatype, shape=list(t.shape)
                )
                for t in items.values()
            ]

        return pb.ModelMetadataResponse(
            name=version.model,
            versions=sorted(entry.versions, key=int),
            platform=PLATFORM,
            inputs=tensors(version.inputs),
            outputs=tensors(version.outputs),
        )

    # ------------------------------------------------------------------ inference

    async def _infer(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> pb.ModelInferResponse:
        if self.draining:
            self.refused_draining += 1
            self.last_activity_ns = time.monotonic_ns()
            raise Unavailable("the server is shutting down")
        version = self.registry.get(request.model_name, request.model_version)
        started = self.last_activity_ns = time.monotonic_ns()
        rows = 0
        status = "UNKNOWN"
        self.in_flight += 1
        try:
            arrays = convert.input_arrays(request)
            datatypes = {tensor.name: tensor.datatype for tensor in request.inputs}
            inputs = validate.model_inputs(version, arrays, datatypes, self.max_rows)
            validate.supported_parameters(request.parameters, "request")
            for wanted in request.outputs:
                validate.supported_parameters(wanted.parameters, f"output '{wanted.name}'")
            outputs = validate.requested_outputs(version, [o.name for o in request.outputs])
            rows = len(next(iter(inputs.values()))) if inputs else 0
            results = await version.infer(inputs, outputs, deadline)
            tensors, raw = convert.output_tensors(results, raw=bool(request.raw_input_contents))
            status = "OK"
            if self.draining:
                self.answered_draining += 1
        except ServingError as error:
            status = error.code.name
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            self.cut_off += 1
            raise
        finally:
            self.in_flight -= 1
            self.last_activity_ns = time.monotonic_ns()
            elapsed = self.last_activity_ns - started
            self.statistics.request(version.model, version.version, status, elapsed, rows)
        return pb.ModelInferResponse(
            model_name=version.model,
            model_version=version.version,
            id=request.id,
            outputs=tensors,
            raw_output_contents=raw,
        )

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
        # progress is answered and the stream then ends with UNAVAILABLE; a stream waiting
        # for its next request is woken by the drain (which cancels its task) to end so.
        task = asyncio.current_task()
        assert task is not None  # a handler always runs in a task
        requests = aiter(request_iterator)
        self.open_streams += 1
        try:
            while True:
                if self.draining:
                    self.refused_draining += 1
                    error = Unavailable("the server is shutting down")
                    await context.abort(error.code, error.message)
                self.idle_streams.add(task)
                try:
                    request = await anext(requests)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not self.draining:
                        raise  # the client went away
                    continue
                finally:
                    self.idle_streams.discard(task)
                if isinstance(request, Undecodable):
                    yield pb.ModelStreamInferResponse(error_message=request.message)
                    continue
                try:
                    response = await self._infer(request, None)
                except ServingError as error:
                    # The id tells a client which of its requests failed (as Triton does).
                    yield pb.ModelStreamInferResponse(
                        error_message=error.message,
                        infer_response=pb.ModelInferResponse(id=request.id),
                    )
                    continue
                except Exception:
                    log.exception("unexpected error in ModelStreamInfer")
                    yield pb.ModelStreamInferResponse(
                        error_message="internal error (see the server log)",
                        infer_response=pb.ModelInferResponse(id=request.id),
                    )
                    continue
                yield pb.ModelStreamInferResponse(infer_response=response)
        finally:
            self.open_streams -= 1
            self.last_activity_ns = time.monotonic_ns()

    # ------------------------------------------------------------------ repository

    @_answers
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        known = dict.fromkeys([*self.registry.names(), *self.registry.entries])
        models = []
        for name in known:
            entry = self.registry.entries.get(name)
            state = entry.state.value if entry else State.UNAVAILABLE.value
            if request.ready and state != State.READY.value:
                continue
            reason = entry.reason if entry else "not loaded"
            versions = sorted(entry.versions, key=int) if entry and entry.versions else [""]
            models += [
                pb.RepositoryIndexResponse.ModelIndex(
                    name=name, version=v, state=state, reason=reason
                )
                for v in versions
            ]
        return pb.RepositoryIndexResponse(models=models)

    @_answers
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        # KServe's own proto puts the model name in field 1 (our repository_name).
        name = request.model_name or request.repository_name
        self.registry.require(name)  # NOT_FOUND before anything about its parameters
        config = parse_load_parameters(name, request.parameters)
        entry = await self.registry.load(name, config)
        if self.peers is not None and not forwarded(context, self.peers.token):
            await self.peers.load(request)
        await self.sync_health()
        if entry.state != State.READY:
            raise ServingError(
                f"model '{name}' failed to load: {entry.reason}",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        return pb.RepositoryModelLoadResponse()

    @_answers
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        name = request.model_name or request.repository_name
        await self.registry.unload(name)
        if self.peers is not None and not forwarded(context, self.peers.token):
            await self.peers.unload(name)
        await self.sync_health()
        return pb.RepositoryModelUnloadResponse()

    @_answers
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            self.registry.get(request.name, request.version)  # NOT_FOUND for unknown models
        # Every loaded version has an entry, zeros until it serves (as Triton answers).
        loaded = {
            (entry.name, version)
            for entry in self.registry.entries.values()
            for version in entry.versions
            if entry.state == State.READY
        }
        counted = dict(self.statistics.models)
        out = []
        for name, version in sorted(loaded | set(counted)):
            stats = counted.get((name, version), ModelStats())
            if request.name and name != request.name:
                continue
            if request.version and version != request.version:
                continue
            out.append(
                pb.ModelStatistics(
                    name=name,
                    version=version,
                    last_inference=stats.last_inference_ms,
                    inference_count=stats.inference_count,
                    execution_count=stats.execution_count,
                    inference_stats=pb.InferStatistics(
                        success=pb.StatisticDuration(
                            count=stats.success.count, ns=stats.success.ns
                        ),
                        fail=pb.StatisticDuration(count=stats.fail.count, ns=stats.fail.ns),
                        queue=pb.StatisticDuration(count=stats.queue.count, ns=stats.queue.ns),
                        compute_infer=pb.StatisticDuration(
                            count=stats.compute_infer.count, ns=stats.compute_infer.ns
                        ),
                    ),
                    batch_stats=[
                        pb.InferBatchStatistics(
                            batch_size=size,
                            compute_infer=pb.StatisticDuration(
                                count=duration.count, ns=duration.ns
                            ),
                        )
                        for size, duration in sorted(stats.batches.items())
                    ],
                )
            )
        if self.peers is not None and not forwarded(context, self.peers.token):
            out = merge_statistics([*out, *await self.peers.statistics(request)])
        return pb.ModelStatisticsResponse(model_stats=out)
