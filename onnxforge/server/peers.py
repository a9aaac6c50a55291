"""The other worker processes of one server (``--workers N``), reached on private ports.

Workers share the public port; each also listens on 127.0.0.1 on a port of its own. A
model load or unload, a readiness question or a statistics query that arrives at one
worker is passed to the others, so that together they behave as one server:
:class:`PeeredDataPlane` wraps a worker's data plane and does the passing on, whichever
transport the call came by. A call passed on is marked with a header so that it is not
passed on again; the mark counts only with the server's internal token (:func:`forwarded`),
so that a client cannot make a load or unload stop at the one worker it happens to reach.
:class:`PeerMark`, a gRPC interceptor, tells the data plane which calls those are.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server import messages
from onnxforge.server.dataplane import (
    DataPlane,
    IndexEntry,
    Inference,
    ModelMetadata,
    ServerMetadata,
)
from onnxforge.server.errors import Code, LoadFailed, ServingError
from onnxforge.server.service import GRPC_STATUS
from onnxforge.server.stats import VersionStats, merge

PEER_HEADER = "x-onnxforge-peer"
_MARK = ((PEER_HEADER, "1"),)
_TIMEOUT = 120.0  # a load may build and open a large model
_CODES = {status: code for code, status in GRPC_STATUS.items()}

# Set while serving a call that another worker passed on.
_FORWARDED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "onnxforge_forwarded", default=False
)


def forwarded(metadata: Iterable[tuple[str, Any]] | None, token: str) -> bool:
    """Whether a call with these headers came from another worker (not to be passed on).

    Only with the server's internal token: the mark alone is what any client can send.
    """
    headers = dict(metadata or ())
    return PEER_HEADER in headers and hmac.compare_digest(
        str(headers.get("authorization", "")).encode(), f"Bearer {token}".encode()
    )


class PeerMark(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc: no types
    """Serves the unary calls of other workers with the forwarded mark set."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # only unary calls are ever passed on
        if not forwarded(details.invocation_metadata, self.token):
            return handler
        behaviour = handler.unary_unary

        async def marked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = _FORWARDED.set(True)
            try:
                return await behaviour(request, context)
            finally:
                _FORWARDED.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            marked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class Peers:
    """gRPC clients of the other workers, once :meth:`connect` names them.

    A worker serves before it knows the others (they start together); a call to pass on
    that arrives in between waits until they are known, so that it still reaches them all.
    """

    def __init__(self, token: str) -> None:
        self.token = token  # the server's internal token: it marks calls between workers
        self.addresses: list[str] = []
        self._metadata = (*_MARK, ("authorization", f"Bearer {token}"))
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[pb_grpc.GRPCInferenceServiceStub] = []
        self._known = asyncio.Event()

    def connect(self, addresses: Iterable[str]) -> None:
        self.addresses = list(addresses)
        self._channels = [grpc.aio.insecure_channel(address) for address in self.addresses]
        self._stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in self._channels]
        self._known.set()

    async def _all(self, method: str, request: Any) -> list[Any]:
        """Every other worker's answer; a worker's error is answered as it gave it."""
        try:
            await asyncio.wait_for(self._known.wait(), _TIMEOUT)
        except asyncio.TimeoutError:  # not yet TimeoutError itself on Python 3.10
            raise ServingError("the other workers have not started", Code.UNAVAILABLE) from None
        calls = [
            getattr(stub, method)(request, metadata=self._metadata, timeout=_TIMEOUT)
            for stub in self._stubs
        ]
        try:
            return list(await asyncio.gather(*calls))
        except grpc.aio.AioRpcError as error:
            code = _CODES.get(error.code(), Code.INTERNAL)
            raise ServingError(error.details() or str(error.code()), code) from None

    async def ready(self) -> bool:
        answers = await self._all("ServerReady", pb.ServerReadyRequest())
        return all(answer.ready for answer in answers)

    async def model_ready(self, name: str, version: str) -> bool:
        answers = await self._all("ModelReady", pb.ModelReadyRequest(name=name, version=version))
        return all(answer.ready for answer in answers)

    async def load(self, name: str, parameters: Mapping[str, object]) -> None:
        """The same load, its configuration included, at every other worker."""
        request = pb.RepositoryModelLoadRequest(
            model_name=name, parameters=messages.repository_parameters(parameters)
        )
        await self._all("RepositoryModelLoad", request)

    async def unload(self, name: str) -> None:
        await self._all("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name))

    async def statistics(self, name: str, version: str) -> list[VersionStats]:
        request = pb.ModelStatisticsRequest(name=name, version=version)
        answers = await self._all("ModelStatistics", request)
        return [messages.version_stats(part) for answer in answers for part in answer.model_stats]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class PeeredDataPlane:
    """A worker's data plane, with control and readiness passed on to the other workers.

    Loads and unloads reach every worker; the server and a model are ready only when they
    are in every worker; statistics are added up over the workers. A call another worker
    passed on is answered by this worker alone. Everything else is the local plane's.
    """

    def __init__(self, local: DataPlane, peers: Peers) -> None:
        self.local = local
        self.peers = peers
        self.drain = local.drain

    @staticmethod
    def _passes_on() -> bool:
        return not _FORWARDED.get()

    async def live(self) -> bool:
        return await self.local.live()

    async def server_ready(self) -> bool:
        ready = await self.local.server_ready()
        if ready and self._passes_on():
            ready = await self.peers.ready()
        return ready

    async def model_ready(self, name: str, version: str = "") -> bool:
        ready = await self.local.model_ready(name, version)
        if ready and self._passes_on():
            ready = await self.peers.model_ready(name, version)
        return ready

    async def server_metadata(self) -> ServerMetadata:
        return await self.local.server_metadata()

    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        return await self.local.model_metadata(name, version)

    async def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        return await self.local.model_config(name, version)

    def inference(self, name: str, version: str = "") -> AbstractAsyncContextManager[Inference]:
        return self.local.inference(name, version)

    async def index(self, ready_only: bool = False) -> list[IndexEntry]:
        return await self.local.index(ready_only)

    async def load(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        # A load that fails here is still passed on, as a user's load reaches every worker;
        # one refused before loading (unknown model, bad parameters) is not.
        failed: LoadFailed | None = None
        try:
            await self.local.load(name, parameters)
        except LoadFailed as error:
            failed = error
        if self._passes_on():
            await self.peers.load(name, parameters or {})
        if failed is not None:
            raise failed

    async def unload(self, name: str) -> None:
        await self.local.unload(name)
        if self._passes_on():
            await self.peers.unload(name)

    async def statistics(self, name: str = "", version: str = "") -> list[VersionStats]:
        found = await self.local.statistics(name, version)
        if self._passes_on():
            found = merge([*found, *await self.peers.statistics(name, version)])
        return found
