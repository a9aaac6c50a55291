"""gRPC health checking (``grpc.health.v1``) kept in step with the data plane.

Services a probe can ask about: ``""`` and ``inference.GRPCInferenceService`` (the server is
ready: every model serves, except those unloaded on purpose), one per model name (it
serves), and ``onnxforge.Live`` -- SERVING while the process runs, whatever the models do,
for liveness probes, which should not restart a server because one model failed to load.

The service is ours, from our own generated ``health.proto`` (``onnxforge.protocol.pool``
says why not grpcio-health-checking's), and behaves as gRPC's reference implementation:
Check answers NOT_FOUND for an unknown service, Watch sends the status now and every
change, and once the server drains every service stays NOT_SERVING.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from onnxforge.protocol.generated import health_pb2, health_pb2_grpc
from onnxforge.server.dataplane import DataPlane
from onnxforge.server.service import SERVICE_NAME

__all__ = ["HEALTH_SERVICE", "LIVE_SERVICE", "HealthServicer", "HealthSync"]

LIVE_SERVICE = "onnxforge.Live"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

_Status: TypeAlias = "health_pb2.HealthCheckResponse.ServingStatus"
_SERVING: _Status = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: _Status = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN: _Status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # generated
    """``grpc.health.v1.Health`` on asyncio: statuses by service, set by :class:`HealthSync`."""

    def __init__(self) -> None:
        self._status: dict[str, _Status] = {"": _SERVING}
        self._changed = asyncio.Condition()
        self._shutting_down = False

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self._status:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self._status[request.service])

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._status.items()
            }
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: _Status | None = None
        while True:
            status = self._status.get(request.service, _UNKNOWN)
            if status != last:  # a watcher wants the state it ends in, not every step
                # Not under the lock: a slow reader must not hold up whoever sets a status.
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            async with self._changed:
                if self._status.get(request.service, _UNKNOWN) == last:
                    await self._changed.wait()

    async def set(self, service: str, status: _Status) -> None:
        """Set one service's status (ignored once the server shuts down)."""
        if not self._shutting_down:
            await self._set(service, status)

    async def _set(self, service: str, status: _Status) -> None:
        async with self._changed:
            self._status[service] = status
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on, whatever is set later."""
        self._shutting_down = True
        for service in list(self._status):
            await self._set(service, _NOT_SERVING)


class HealthSync:
    """A data-plane listener: sets every health service from what serves now."""

    def __init__(self, plane: DataPlane, health: HealthServicer) -> None:
        self.plane = plane
        self.health = health

    async def __call__(self) -> None:
        plane, health = self.plane, self.health
        ready = _SERVING if plane.ready_now() else _NOT_SERVING
        await health.set(LIVE_SERVICE, _NOT_SERVING if plane.drain.draining else _SERVING)
        await health.set("", ready)
        await health.set(SERVICE_NAME, ready)
        for name, serving in plane.serving().items():
            await health.set(name, _SERVING if serving else _NOT_SERVING)
