"""gRPC health checking (``grpc.health.v1``) kept in step with the data plane.

Services a probe can ask about: ``""`` and ``inference.GRPCInferenceService`` (the server is
ready: every model serves, except those unloaded on purpose), one per model name (it
serves), and ``onnxforge.Live`` -- SERVING while the process runs, whatever the models do,
for liveness probes, which should not restart a server because one model failed to load.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer  # what grpc_health.v1.health.aio names

from onnxforge.server.dataplane import DataPlane
from onnxforge.server.service import SERVICE_NAME

LIVE_SERVICE = "onnxforge.Live"

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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
