"""The public gRPC port on grpc's thread-pool server, with ModelInfer on the calling thread.

Why: with grpc.aio every call crosses the event loop, and that machinery costs more than a
small model's whole ``session.run``. A do-nothing thread-pool server answers a 1-row
request for about two thirds of the CPU a do-nothing grpc.aio server needs
(``benchmarks/hot_path.py``). So the public port is served by ``grpc.server`` with a pool
of threads, and ModelInfer -- nearly all of the traffic -- runs entirely on the gRPC thread
that received it: decode, check, the batcher (that thread leads a batch or waits for one:
``server.batcher``), encode. No hop to the loop, no hop to a model thread.

Every other RPC (health, metadata, readiness, repository control, statistics, config,
reflection, and the streams) is rare or long-lived. :class:`ThreadedServer` answers it with
the very asyncio handlers registered on it (``server.service`` and the others), run on the
server's event loop, which owns the registry: there is one implementation of each RPC,
whichever server carries it. A context adapter gives those handlers what they use of
``grpc.aio.ServicerContext``; an abort there becomes the same status here.

Two lanes of threads (:class:`_Lanes`). ModelInfer calls run on a
:class:`~onnxforge.server.pacing.PacedExecutor`: one call runs at a time (``infer_running``)
while every call that waits -- for its batch, or for ONNX Runtime, which lets go of the GIL
-- gives its place to the next, on up to ``infer_threads`` threads (default 64, so that 32
clients' requests can all wait in one batch). Threads that run at the same time only take
turns on the GIL: measured on 2 cores with 32 clients of a small model, one running call
spent 20-30% less CPU per request than 16 free threads (2 running: about halfway).

Every other call -- streams, which hold a thread for as long as they are open, health
watches, control -- has a lane of its own (``other_threads``), so that open streams never
starve inference, nor the reverse. Calls beyond a lane's threads wait in its queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc

from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.server import affinity, convert, messages
from onnxforge.server.batcher import RequestCancelled
from onnxforge.server.dataplane import DataPlane
from onnxforge.server.errors import ServingError
from onnxforge.server.pacing import PacedExecutor
from onnxforge.server.security import Security, _bearer, grpc_access
from onnxforge.server.service import (
    GRPC_STATUS,
    INTERNAL_MESSAGE,
    SERVICE_NAME,
    Undecodable,
    lenient,
)

log = logging.getLogger("onnxforge.server")

MODEL_INFER = f"/{SERVICE_NAME}/ModelInfer"
_END = object()
NO_DEADLINE_S = 86400.0 * 365  # the end of a stream's requests or responses


class _Abort(grpc.aio.AbortError):  # type: ignore[misc]  # passes through service._answers
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _LoopContext:
    """What an asyncio handler uses of its context, for a call a pool thread carries."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context
        self.headers: tuple[tuple[str, str], ...] | None = None
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None

    async def abort(self, code: grpc.StatusCode, details: str = "", *args: Any) -> None:
        raise _Abort(code, details)

    async def send_initial_metadata(self, headers: Sequence[tuple[str, str]]) -> None:
        self.headers = tuple(headers)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()  # type: ignore[no-any-return]

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()  # type: ignore[no-any-return]

    def cancelled(self) -> bool:
        return not self._context.is_active()

    def done(self) -> bool:
        return not self._context.is_active()

    def __getattr__(self, name: str) -> Any:  # anything else: the real context's
        return getattr(self._context, name)

    def apply(self) -> None:
        """What the handler set, on the real context (after it returned)."""
        if self.headers:
            self._context.send_initial_metadata(self.headers)
        if self.code is not None:
            self._context.set_code(self.code)
        if self.details is not None:
            self._context.set_details(self.details)


class _Bridge:
    """Runs asyncio handlers on the event loop for calls that pool threads carry."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def unary(self, behaviour: Callable[..., Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            adapter = _LoopContext(context)
            future = asyncio.run_coroutine_threadsafe(behaviour(request, adapter), self.loop)
            context.add_callback(future.cancel)  # the client left: stop the handler
            try:
                response = future.result()
            except _Abort as abort:
                adapter.apply()
                context.abort(abort.code, abort.details)
            except concurrent.futures.CancelledError:
                return None  # nobody is listening
            adapter.apply()
            return response

        return handler

    def streaming(
        self, behaviour: Callable[..., Any], request_streaming: bool
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            adapter = _LoopContext(context)
            responses: queue.SimpleQueue[Any] = queue.SimpleQueue()
            requests = self._requests(request) if request_streaming else request

            async def pump() -> None:
                try:
                    async for response in behaviour(requests, adapter):
                        responses.put(response)
                except BaseException as error:  # an abort, a cancel, or a bug: handed over
                    responses.put(error)
                    if not isinstance(error, Exception):
                        raise
                finally:
                    responses.put(_END)

            future = asyncio.run_coroutine_threadsafe(pump(), self.loop)
            context.add_callback(future.cancel)
            while (item := responses.get()) is not _END:
                if isinstance(item, _Abort):
                    adapter.apply()
                    context.abort(item.code, item.details)
                if isinstance(item, BaseException):
                    if not isinstance(item, asyncio.CancelledError):
                        log.error("unexpected error in a stream", exc_info=item)
                        context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
                    return
                yield item
            adapter.apply()

        return handler

    def _requests(self, iterator: Iterator[Any]) -> AsyncIterator[Any]:
        """A stream's requests, read by a thread of its own, as an async iterator."""
        loop = self.loop
        arrived: asyncio.Queue[Any] = asyncio.Queue()

        def read() -> None:
            # The call ended (cancelled: an exception), or the loop closed (RuntimeError,
            # the server is gone): no more requests either way.
            with contextlib.suppress(Exception):
                for request in iterator:
                    loop.call_soon_threadsafe(arrived.put_nowait, request)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(arrived.put_nowait, _END)

        threading.Thread(target=read, name="onnxforge-stream-reader", daemon=True).start()

        async def requests() -> AsyncIterator[Any]:
            while (request := await arrived.get()) is not _END:
                yield request

        return requests()

    def handler(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` for a pool thread: an asyncio behaviour is bridged, a plain one kept."""
        streaming = handler.request_streaming, handler.response_streaming
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
        }[streaming]
        behaviour = (
            handler.unary_unary
            or handler.stream_stream
            or handler.unary_stream
            or handler.stream_unary
        )
        if handler.response_streaming and inspect.isasyncgenfunction(behaviour):
            bridged = self.streaming(behaviour, handler.request_streaming)
        elif not handler.response_streaming and inspect.iscoroutinefunction(behaviour):
            if handler.request_streaming:
                raise TypeError("client-streaming asyncio handlers are not bridged")
            bridged = self.unary(behaviour)
        else:
            return handler
        return make(
            bridged,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Bridged(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc: no types
    def __init__(self, inner: grpc.GenericRpcHandler, bridge: _Bridge) -> None:
        self.inner, self.bridge = inner, bridge

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        found = self.inner.service(details)
        return None if found is None else self.bridge.handler(found)


class ModelInfer:
    """ModelInfer on the gRPC thread that received it (the hot path; see the module doc)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def __call__(self, request: Any, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        remaining = context.time_remaining()
        # Without a deadline the thread-pool server says "years": none, for the batcher.
        no_deadline = remaining is None or remaining > NO_DEADLINE_S
        deadline = None if no_deadline else time.monotonic() + remaining
        try:
            with self.plane.inference(request.model_name, request.model_version) as call:
                inputs = convert.input_arrays(request)
                decoded = messages.infer_request(request, inputs)
                outputs = call.run_blocking(decoded, deadline, context.add_callback)
                if not context.is_active():  # the client left while its run went on
                    raise RequestCancelled(call.model)
                return convert.infer_response(request, call.model, call.version, outputs)
        except ServingError as error:
            context.abort(GRPC_STATUS[error.code], error.message)
        except RequestCancelled:
            return pb.ModelInferResponse()  # the client left: nobody reads this
        except Exception:
            log.exception("unexpected error in ModelInfer")
            context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        raise AssertionError("unreachable")  # abort() always raises

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "ModelInfer": grpc.unary_unary_rpc_method_handler(
                    self,
                    request_deserializer=lenient(pb.ModelInferRequest),
                    response_serializer=pb.ModelInferResponse.SerializeToString,
                )
            },
        )


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc: no types
    """``server.security``'s check, before any handler, on a pool thread."""

    def __init__(self, security: Security) -> None:
        self.security = security

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        try:
            self.security.authorize(
                grpc_access(details.method), _bearer(details.invocation_metadata)
            )
        except ServingError as refused:
            return _refusal(handler, GRPC_STATUS[refused.code], refused.message)
        return handler


def _refusal(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only answers ``code``."""

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    def abort_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(code, message)
        yield  # pragma: no cover - makes this a generator, as streaming needs

    streaming = handler.request_streaming, handler.response_streaming
    make, body = {
        (False, False): (grpc.unary_unary_rpc_method_handler, abort),
        (True, True): (grpc.stream_stream_rpc_method_handler, abort_stream),
        (False, True): (grpc.unary_stream_rpc_method_handler, abort_stream),
        (True, False): (grpc.stream_unary_rpc_method_handler, abort),
    }[streaming]
    return make(
        body,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _Lanes(concurrent.futures.Executor):
    """The gRPC server's executor: ModelInfer's calls on one pool, the rest on another.

    gRPC submits each call with its method's behaviour among the arguments; ModelInfer's is
    the :class:`ModelInfer` object itself, which is how its calls are told apart.
    """

    def __init__(
        self, infer: object, infer_threads: int, other_threads: int, infer_running: int
    ) -> None:
        self._infer = infer
        self._inference = PacedExecutor(infer_running, infer_threads, name="onnxforge-infer")
        self._others = concurrent.futures.ThreadPoolExecutor(
            other_threads, thread_name_prefix="onnxforge-grpc", initializer=affinity.unpin
        )

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        infer = self._infer is not None and any(arg is self._infer for arg in args)
        return (self._inference if infer else self._others).submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._inference.shutdown(wait, cancel_futures=cancel_futures)
        self._others.shutdown(wait, cancel_futures=cancel_futures)


class ThreadedServer:
    """A ``grpc.server`` that takes what a ``grpc.aio.Server`` is given (see the module doc).

    ``infer``: the ModelInfer that runs on the pool's threads; registered before anything
    else, so it answers ModelInfer and the bridged asyncio servicer the rest.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        options: Sequence[tuple[str, Any]],
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        infer_threads: int = 64,
        other_threads: int = 256,
        infer_running: int = 1,
        infer: ModelInfer | None = None,
    ) -> None:
        self._bridge = _Bridge(loop)
        self._pool = _Lanes(infer, infer_threads, other_threads, infer_running)
        self._server = grpc.server(self._pool, options=list(options), interceptors=interceptors)
        if infer is not None:
            self._server.add_generic_rpc_handlers((infer.handler(),))

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_Bridged(handler, self._bridge) for handler in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """Generated ``add_*Servicer_to_server`` helpers call this after registering the same
        handlers as a generic handler, which is what is bridged: nothing more to do."""

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)  # type: ignore[no-any-return]

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, credentials)  # type: ignore[no-any-return]

    async def start(self) -> None:
        self._server.start()

    async def stop(self, grace: float | None) -> None:
        stopped = self._server.stop(grace)
        await asyncio.to_thread(stopped.wait)
        await asyncio.to_thread(self._pool.shutdown, wait=False)
