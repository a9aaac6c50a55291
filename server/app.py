"""Assembling and running the server: ``create_server(settings) -> (server, port)``."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.generated import inference_pb2_grpc as pb_grpc
from server.registry import Registry
from server.service import InferenceService
from server.stats import Statistics

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


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    service: InferenceService
    registry: Registry

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), close models."""
        self.service.draining = True
        await self.server.stop(grace)
        await self.registry.close()


async def create_server(settings: Settings) -> Running:
    """Load the repository and start serving; returns the server and the port it bound."""
    statistics = Statistics()
    registry = Registry(
        settings.repository,
        threads=settings.threads,
        build_missing=settings.build_missing,
        max_queue=settings.max_queue,
        on_batch=statistics.batch,
    )
    await registry.load_all()
    service = InferenceService(registry, statistics)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.port}")
    await server.start()
    log.info(
        "serving %d model(s) from %s on %s:%d",
        len(registry.entries),
        settings.repository,
        settings.host,
        port,
    )
    return Running(server, port, service, registry)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await create_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests")
    await running.stop(settings.grace_seconds)
