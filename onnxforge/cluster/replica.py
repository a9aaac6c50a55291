"""One replica: an onnxforge gRPC server inside a Ray actor, sharing its node's public port.

A replica is the single-machine server (``server.app.create_server``) as it runs under
``--workers``: it binds the public port with SO_REUSEPORT, so every replica on a node
answers on the same address and the kernel spreads connections among them, and it listens
on a private control port of its own, on the node's address, where the other replicas
reach it as peers (``server.peers``): a load, an unload, a readiness question or a
statistics query that reaches one replica reaches them all.

This module does not import Ray at import time: :class:`ReplicaServer` is a plain class
that ``cluster.deployment`` turns into an actor, and Ray restarts it when its process dies
(``__init__`` runs again; the deployment then calls :meth:`ReplicaServer.start`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from dataclasses import dataclass

from onnxforge.server.app import Running, Settings

log = logging.getLogger("onnxforge.cluster")


@dataclass(frozen=True)
class ReplicaInfo:
    """What the deployment knows of one replica's current process."""

    pid: int  # changes when Ray restarts the replica
    node_id: str  # the Ray node it runs on ("" outside Ray)
    port: int | None  # the public gRPC port it serves, once started
    http_port: int | None  # its HTTP/REST port (shared as the gRPC one), when it serves one
    control: str | None  # host:port of its control listener, once started


class ReplicaServer:
    """The server of one replica; every method runs on the actor's event loop."""

    def __init__(self, settings: Settings, level: str = "info", fmt: str = "text") -> None:
        from onnxforge.server import logs

        logs.configure(level, fmt)  # Ray passes the lines on to the driver's output
        self.settings = settings
        self.running: Running | None = None
        self._starting = asyncio.Lock()

    def info(self) -> ReplicaInfo:
        running = self.running
        control = None
        if running is not None and running.control_port is not None:
            control = f"{self.settings.control_host}:{running.control_port}"
        return ReplicaInfo(
            pid=os.getpid(),
            node_id=_node_id(),
            port=running.port if running else None,
            http_port=running.http_port if running else None,
            control=control,
        )

    async def start(self, port: int, http_port: int | None) -> ReplicaInfo:
        """Load the repository and serve on ``port`` (0: a free one); idempotent.

        ``http_port``: HTTP/REST's, shared likewise (ignored when the settings have none).
        """
        from onnxforge.server.app import create_server

        async with self._starting:
            if self.running is None:
                self.settings = dataclasses.replace(
                    self.settings,
                    port=port,
                    http_port=None if self.settings.http_port is None else http_port,
                    reuse_port=True,
                    control_port=True,
                    control_host=_node_address(),
                )
                self.running = await create_server(self.settings)
        return self.info()

    async def connect(self, addresses: list[str]) -> None:
        """The other replicas' control addresses (the whole list each time it changes)."""
        running = self._running()
        assert running.peers is not None
        own = self.info().control
        # A changed list replaces the channels; the old ones to a dead replica stay idle.
        running.peers.connect(address for address in addresses if address != own)

    def load(self) -> tuple[int, int, int]:
        """(requests in flight integrated over time, this process's CPU time, when), in ns:
        what the autoscaler averages between two readings (``Drain.in_flight_ns``)."""
        running = self.running
        in_flight, now = running.plane.drain.in_flight_ns() if running else (0, 0)
        return in_flight, time.process_time_ns(), now or time.monotonic_ns()

    def metrics_text(self) -> str:
        """Its Prometheus metrics, as text (the driver adds every replica's up)."""
        from prometheus_client import generate_latest

        running = self.running
        return generate_latest(running.metrics.registry).decode() if running else ""

    async def ready_models(self) -> list[str]:
        """The models this replica serves now (for a restarted replica to match)."""
        entries = await self._running().plane.index(ready_only=True)
        return sorted({entry.name for entry in entries})

    async def match(self, names: list[str]) -> None:
        """Load and unload here only, so as to serve exactly ``names`` (after a restart).

        A restarted replica loads the whole repository; the others may have had models
        unloaded or loaded since. Their load parameters are not known here: a model loaded
        with a configuration override comes back with its own configuration.
        """
        plane = self._running().plane
        wanted = set(names)
        serving = set(await self.ready_models())
        for name in sorted(serving - wanted):
            await plane.unload(name)
        for name in sorted(wanted - serving):
            try:
                await plane.load(name)
            except Exception:  # the others serve it; log and keep serving the rest
                log.exception("replica %d: cannot load %s to match the others", os.getpid(), name)

    async def stop(self, grace: float) -> None:
        """Drain and stop (every request answered or UNAVAILABLE), as ``serve`` does."""
        if self.running is not None:
            running, self.running = self.running, None
            await running.stop(grace)

    def _running(self) -> Running:
        if self.running is None:
            raise RuntimeError("the replica has not started")
        return self.running


def _node_address() -> str:
    import ray.util

    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


def _node_id() -> str:
    import ray

    if not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().get_node_id())
