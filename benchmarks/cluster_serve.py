"""The other topology, for comparison only: onnxforge behind Ray Serve's gRPC proxy.

``benchmarks/cluster.py --ray-serve`` deploys :class:`Probe` as a Ray Serve application
whose ``ModelInfer`` is onnxforge's own servicer on its own data plane (the same code that
answers in a plain server), so that the difference measured is Ray Serve's proxy and
routing. Only ModelInfer: enough to measure, not a product (``serve --ray`` does not use
this path; see the README's "Beyond one machine").

Ray Serve pickles requests through its proxy and imports this module in its replicas:
``cluster.py`` registers it to be pickled by value. No type annotations on the methods
Serve calls (protobuf annotations break the deployment, as issue 13 found).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

SERVICER = (
    "onnxforge.protocol.generated.inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
)


class _Context:
    """What the servicer asks of a gRPC context on ModelInfer."""

    def time_remaining(self) -> float | None:
        return None


class Probe:
    """One Ray Serve replica: a registry, a data plane and the servicer, no transport."""

    def __init__(self, repository: str) -> None:
        self.repository = Path(repository)
        self.service: Any = None
        self._loading = asyncio.Lock()

    async def _service(self) -> Any:
        from onnxforge.server.dataplane import DataPlane
        from onnxforge.server.metrics import Metrics
        from onnxforge.server.registry import Registry
        from onnxforge.server.service import InferenceService
        from onnxforge.server.stats import Statistics

        async with self._loading:
            if self.service is None:
                statistics = Statistics(Metrics())
                registry = Registry(
                    self.repository, threads=1, build_missing=False, on_batch=statistics.batch
                )
                await registry.load_all()
                self.service = InferenceService(DataPlane(registry, statistics))
        return self.service

    async def ModelInfer(self, request):  # no annotations: see the module docstring
        service = await self._service()
        return await service.ModelInfer(request, _Context())


def deploy(repository: Path, replicas: int, port: int, http_port: int) -> None:
    """Start Ray Serve (proxy on the head node only) with ``replicas`` of :class:`Probe`."""
    from ray import serve
    from ray.serve.config import gRPCOptions

    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options=gRPCOptions(port=port, grpc_servicer_functions=[SERVICER]),
    )
    app = serve.deployment(Probe, num_replicas=replicas, ray_actor_options={"num_cpus": 1}).bind(
        str(repository)
    )
    serve.run(app, name="onnxforge", route_prefix="/onnxforge")


def shutdown() -> None:
    from ray import serve

    serve.shutdown()
