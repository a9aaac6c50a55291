"""Assembling and running the server: ``create_server(settings) -> (server, port)``."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # what grpc_health.v1.health.aio names
from grpc_reflection.v1alpha import reflection

from onnxforge.server.metrics import Metrics
from onnxforge.server.registry import Registry
from onnxforge.server.security import Security
from onnxforge.server.service import SERVICE_NAME, InferenceService, register
from onnxforge.server.stats import Statistics
from onnxforge.server.watch import Watcher

log = logging.getLogger("onnxforge.server")


@dataclass(frozen=True)
class Settings:
    repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = 8001  # 0 picks a free port (tests)
    threads: int = 0  # ONNX Runtime intra-op threads per session; 0 lets it choose
    build_missing: bool = True
    max_queue: int = 1024  # requests waiting per model before RESOURCE_EXHAUSTED
    max_message_bytes: int = 64 * 1024 * 1024
    grace_seconds: float = 10.0
    metrics_port: int | None = 8002  # None: no metrics endpoint; 0 picks a free port
    watch_seconds: float | None = None  # poll the repository for changes this often
    security: Security = field(default_factory=Security)
    max_rows: int = 65536  # rows per request; more is RESOURCE_EXHAUSTED
    max_streams: int = 256  # concurrent RPCs per client connection
    max_model_bytes: int = 2**31  # a bigger file is not loaded (UNAVAILABLE, with the reason)
    batching: bool = True  # False: every request is its own session.run (for comparisons)
    reuse_port: bool = False  # workers share the public port (SO_REUSEPORT)
    control_port: bool = False  # also listen on a private 127.0.0.1 port for peer workers


# The drain: after in-flight work is done, calls are still answered UNAVAILABLE until
# none has arrived or ended for QUIET_SECONDS (at most SETTLE_SECONDS, and never past the
# grace period). Only then does the transport stop: gRPC cancels (CANCELLED, not
# UNAVAILABLE) any call it has received but not yet handed to the servicer when it stops.
QUIET_SECONDS = 0.25
SETTLE_SECONDS = 2.0
POLL_SECONDS = 0.01


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    service: InferenceService
    registry: Registry
    metrics: Metrics
    metrics_port: int | None
    watcher: asyncio.Task[None] | None = None
    control_port: int | None = None

    async def stop(self, grace: float) -> None:
        """Drain, then stop: every request gets its full answer or UNAVAILABLE.

        1. Draining: health says NOT_SERVING, new inference calls are answered UNAVAILABLE,
           a stream ends with UNAVAILABLE after the request it is serving.
        2. Wait (up to ``grace`` s) for the requests in flight and the open streams.
        3. Settle: keep answering UNAVAILABLE until the traffic stops (see QUIET_SECONDS).
        4. Stop the transport (whatever still runs when ``grace`` is over is cancelled and
           counted as cut off), close the models.
        """
        service = self.service
        deadline = time.monotonic() + grace
        answered, refused, cut = (
            service.answered_draining,
            service.refused_draining,
            service.cut_off,
        )
        service.draining = True
        for stream in list(service.idle_streams):  # woken to end with UNAVAILABLE
            stream.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
        if service.health is not None:
            await service.health.enter_graceful_shutdown()
        await self._drain(deadline)
        await self.server.stop(max(0.0, deadline - time.monotonic()))
        await self.registry.close()
        self.metrics.stop()
        log.info(
            "stopped: %d answered during the drain, %d refused UNAVAILABLE, %d cut off",
            service.answered_draining - answered,
            service.refused_draining - refused,
            service.cut_off - cut,
        )

    async def _drain(self, deadline: float) -> None:
        """Until nothing is in flight and no call came or went for QUIET_SECONDS."""
        service = self.service
        idle_since: float | None = None  # nothing in flight since then
        while (now := time.monotonic()) < deadline:
            if service.in_flight or service.open_streams:
                idle_since = None
            else:
                idle_since = now if idle_since is None else idle_since
                quiet = now - service.last_activity_ns / 1e9
                if quiet >= QUIET_SECONDS or now - idle_since >= SETTLE_SECONDS:
                    return
            await asyncio.sleep(POLL_SECONDS)


async def create_server(settings: Settings) -> Running:
    """Load the repository and start serving; returns the server and the port it bound."""
    metrics = Metrics()
    statistics = Statistics(metrics)
    registry = Registry(
        settings.repository,
        threads=settings.threads,
        build_missing=settings.build_missing,
        max_queue=settings.max_queue,
        max_model_bytes=settings.max_model_bytes,
        batching=settings.batching,
        on_batch=statistics.batch,
    )
    await registry.load_all()
    health = HealthServicer()
    service = InferenceService(registry, statistics, health)
    service.max_rows = settings.max_rows
    await service.sync_health()
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # gRPC shares ports by default on Linux; a second server on a busy port must fail.
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ("grpc.max_concurrent_streams", settings.max_streams),
    ]
    security = settings.security
    server = grpc.aio.server(options=options, interceptors=security.interceptors())
    register(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    # Reflection lets grpcurl and other tools work without the .proto file.
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    try:
        if security.tls:
            port = server.add_secure_port(address, security.server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc's way of saying the address is taken or unusable
        port = 0
    if port == 0:
        await registry.close()
        raise OSError(f"cannot bind {address} (in use, or not an address of this machine)")
    if not security.tls and not _loopback(settings.host):
        log.warning(
            "serving on %s without TLS: anyone who can reach the port sees the "
            "traffic (and any tokens); use --tls-cert/--tls-key",
            settings.host,
        )
    control_port = server.add_insecure_port("127.0.0.1:0") if settings.control_port else None
    await server.start()
    metrics_port = None
    if settings.metrics_port is not None:
        metrics_port = metrics.start(settings.host, settings.metrics_port)
    where = f"http://{settings.host}:{metrics_port}/metrics" if metrics_port else "off"
    log.info(
        "serving %d model(s) from %s on %s:%d (metrics: %s)",
        len(registry.entries),
        settings.repository,
        settings.host,
        port,
        where,
    )
    running = Running(
        server, port, service, registry, metrics, metrics_port, control_port=control_port
    )
    if settings.watch_seconds is not None:
        watcher = Watcher(registry, service, settings.watch_seconds)
        running.watcher = asyncio.create_task(watcher.run(), name="watch")
    return running


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before loading: a signal then is not lost
        loop.add_signal_handler(sig, stop.set)
    running = await create_server(settings)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests")
    await running.stop(settings.grace_seconds)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
