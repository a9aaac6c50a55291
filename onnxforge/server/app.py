"""Assembling and running the server: ``create_server(settings) -> Running``.

The layers, from the files up: the registry (``server.registry``: repository scan, builds,
one runtime per model version), the data plane (``server.dataplane``: every answer, no
transport), and the transports on top -- the gRPC servicer (``server.service``), health,
reflection, HTTP/REST (``server.rest``, on the same data plane and event loop) and
metrics. ``Running`` holds them, with the ports bound (``port=0`` picks a free one, as
tests do), and stops them with a drain.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from onnxforge.server import affinity
from onnxforge.server import loop as event_loop
from onnxforge.server.dataplane import DataPlane
from onnxforge.server.health import HEALTH_SERVICE, HealthServicer, HealthSync
from onnxforge.server.metrics import Metrics
from onnxforge.server.peers import PeeredDataPlane, PeerMark, Peers
from onnxforge.server.reflection import REFLECTION_SERVICE, ReflectionServicer
from onnxforge.server.registry import Registry
from onnxforge.server.rest import HttpServer, start_http
from onnxforge.server.security import Security
from onnxforge.server.service import SERVICE_NAME, InferenceService, register
from onnxforge.server.stats import Statistics
from onnxforge.server.threaded import AuthInterceptor as ThreadedAuth
from onnxforge.server.threaded import ModelInfer, ThreadedServer
from onnxforge.server.watch import Watcher, snapshot

log = logging.getLogger("onnxforge.server")
DEFAULT_GRPC_THREADS = 64  # ModelInfer threads in all; one runs at a time (server.pacing)


@dataclass(frozen=True)
class Settings:
    repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = 8001  # 0 picks a free port (tests)
    threads: int = 0  # ONNX Runtime intra-op threads per session; 0 lets it choose
    # Idle intra-op threads sleep: spinning ones take the cores the event loop needs.
    spinning: bool | None = False  # None: ONNX Runtime's default (spin)
    build_missing: bool = True
    max_queue: int = 1024  # requests waiting per model before RESOURCE_EXHAUSTED
    max_message_bytes: int = 64 * 1024 * 1024
    grace_seconds: float = 10.0
    metrics_port: int | None = 8002  # None: no metrics endpoint; 0 picks a free port
    # KServe v2 HTTP/REST; None: off (the CLI's default is 8000, Triton's); 0 picks a free port
    http_port: int | None = None
    watch_seconds: float | None = None  # poll the repository for changes this often
    security: Security = field(default_factory=Security)
    max_rows: int = 65536  # rows per request; more is RESOURCE_EXHAUSTED
    max_streams: int = 256  # concurrent RPCs per client connection
    max_model_bytes: int = 2**31  # a bigger file is not loaded (UNAVAILABLE, with the reason)
    batching: bool = True  # False: every request is its own session.run (for comparisons)
    # A lone request to a model whose lone runs take at most this long runs on the event
    # loop's thread instead of the model's (server.batcher); 0: never.
    inline_us: int = 200
    reuse_port: bool = False  # workers share the public port (SO_REUSEPORT)
    # Where the metrics are served when not by this process (a --workers worker: the
    # parent), for the start-up line; None: here, or off.
    metrics_elsewhere: str | None = None
    # Threads serving ModelInfer on the public gRPC port (server.threaded; streams and the
    # other calls have threads of their own). 0: grpc.aio, every call on the event loop.
    # None: chosen from the models loaded at start-up (grpc_threads_for).
    grpc_threads: int | None = 0
    control_port: bool = False  # also listen on a private port for peer workers
    # Where that private port listens: loopback for --workers; the node's address for the
    # replicas of a Ray cluster (onnxforge.cluster), which are peers across machines.
    control_host: str = "127.0.0.1"
    # Close each client connection after this long (GOAWAY; its calls in flight finish and
    # the client reconnects): with replicas sharing a port, reconnections spread the
    # clients over replicas added since. None: connections last.
    max_connection_age_s: float | None = None
    # The CPU the event loop's thread is pinned to once serving (server.affinity); None:
    # left to the scheduler.
    loop_cpu: int | None = None


@dataclass
class Running:
    """A started server: what ``create_server`` returns and ``stop`` shuts down."""

    server: grpc.aio.Server | ThreadedServer  # the public gRPC port
    port: int  # the public port bound (the one asked for, or a free one for port 0)
    plane: DataPlane  # this process's data plane
    registry: Registry
    metrics: Metrics
    metrics_port: int | None
    health: HealthServicer
    watcher: asyncio.Task[None] | None = None
    control_port: int | None = None  # private 127.0.0.1 port for the other workers
    peers: Peers | None = None  # the other workers (--workers): ``peers.connect`` names them
    control: grpc.aio.Server | None = None  # the private port, when not ``server``'s
    http: HttpServer | None = None  # HTTP/REST, when on

    @property
    def http_port(self) -> int | None:
        return None if self.http is None else self.http.port

    async def stop(self, grace: float) -> None:
        """Drain, then stop: every request gets its full answer or UNAVAILABLE.

        1. Draining: health says NOT_SERVING, new inference calls are answered UNAVAILABLE
           (HTTP 503), a stream ends with UNAVAILABLE after the request it is serving.
        2. Wait (up to ``grace`` s) for the requests in flight and the open streams.
        3. Settle: keep answering UNAVAILABLE until the traffic stops (``server.drain``).
        4. Stop the transports (whatever still runs when ``grace`` is over is cancelled and
           counted as cut off), close the models.
        """
        drain = self.plane.drain
        deadline = time.monotonic() + grace
        before = drain.tally()
        drain.begin()
        if self.watcher is not None:
            self.watcher.cancel()
        await self.health.enter_graceful_shutdown()
        await drain.settle(deadline)
        stopping = [self.server.stop(max(0.0, deadline - time.monotonic()))]
        if self.control is not None:
            stopping.append(self.control.stop(max(0.0, deadline - time.monotonic())))
        if self.http is not None:
            stopping.append(self.http.stop())
        await asyncio.gather(*stopping)
        await self.registry.close()
        if self.peers is not None:
            await self.peers.close()
        self.metrics.stop()
        during = drain.tally() - before
        log.info(
            "stopped: %d answered during the drain, %d refused UNAVAILABLE, %d cut off",
            during.answered,
            during.refused,
            during.cut_off,
        )


def _threads_said(threads: int) -> str:
    if threads == 0:
        return "ONNX Runtime's own intra-op threads"
    return f"{threads} intra-op thread{'s' if threads > 1 else ''} per session"


def grpc_threads_for(settings: Settings, registry: Registry) -> int:
    """``settings.grpc_threads``, or when it is None (``--grpc-threads auto``) the thread
    pool when every model loaded at start-up timed quick at load (``Version.lone_run_ns``
    within ``inline_us``), grpc.aio otherwise. Models loaded later do not change the choice.

    Not the default: measured on 2 cores (``benchmarks/README.md``, ``serving.py --flags``),
    grpc.aio on uvloop with its thread pinned answered 1.4x the thread pool's requests for
    one lone client of a small model, 1.9x at 32 clients, and 2.3x for the wide model's 32
    clients, whose batches fill while ONNX Runtime runs.
    """
    if settings.grpc_threads is not None:
        return settings.grpc_threads
    versions = [v for entry in registry.entries.values() for v in entry.versions.values()]
    quick = settings.inline_us > 0 and all(v.quick(settings.inline_us) for v in versions)
    return DEFAULT_GRPC_THREADS if quick else 0


async def create_server(settings: Settings) -> Running:
    """Load the repository and start serving; returns a ``Running`` with the bound port.

    Raises OSError when the address cannot be bound (the models are closed again).
    """
    if settings.loop_cpu is not None:  # threads the loop starts once pinned must not be
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(thread_name_prefix="onnxforge-io", initializer=affinity.unpin)
        )
    metrics = Metrics()
    statistics = Statistics(metrics)
    registry = Registry(
        settings.repository,
        threads=settings.threads,
        spinning=settings.spinning,
        build_missing=settings.build_missing,
        max_queue=settings.max_queue,
        max_model_bytes=settings.max_model_bytes,
        batching=settings.batching,
        on_batch=statistics.batch,
        inline_us=settings.inline_us,
    )
    # Taken before the load: what changes from here on is for the watcher to apply.
    sources = snapshot(settings.repository) if settings.watch_seconds is not None else None
    await registry.load_all()
    plane = DataPlane(registry, statistics, max_rows=settings.max_rows)
    health = HealthServicer()
    plane.listeners.append(HealthSync(plane, health))
    await plane.changed()
    security = settings.security
    interceptors = security.interceptors()
    # With --workers, the other workers reach this one on a private port, as peers.
    peers = Peers(security.internal_token) if settings.control_port else None
    if peers is not None:
        interceptors.append(PeerMark(security.internal_token))
    # Both transports on one plane: with workers, the one that passes control on to peers.
    transport_plane = plane if peers is None else PeeredDataPlane(plane, peers)
    service = InferenceService(transport_plane)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # gRPC shares ports by default on Linux; a second server on a busy port must fail.
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ("grpc.max_concurrent_streams", settings.max_streams),
    ]
    if settings.max_connection_age_s is not None:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000)),
        ]
    server: grpc.aio.Server | ThreadedServer
    grpc_threads = grpc_threads_for(settings, registry)
    if grpc_threads > 0:
        server = ThreadedServer(
            asyncio.get_running_loop(),
            options=options,
            interceptors=[ThreadedAuth(security)] if security.checks else [],
            infer_threads=grpc_threads,
            infer=ModelInfer(plane),
        )
    else:
        server = grpc.aio.server(options=options, interceptors=interceptors)
    # Other workers' calls come to the private port: on grpc.aio, with the peer mark.
    control = None
    if settings.control_port and isinstance(server, ThreadedServer):
        control = grpc.aio.server(options=options, interceptors=interceptors)
    for each in (server, control):
        if each is None:
            continue
        register(service, each)
        health.add_to(each)
        # Reflection lets grpcurl and other tools work without the .proto file.
        ReflectionServicer([SERVICE_NAME, HEALTH_SERVICE, REFLECTION_SERVICE]).add_to(each)
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
    private = control or server
    control_port = (
        private.add_insecure_port(f"{settings.control_host}:0") if settings.control_port else None
    )
    watcher = None
    if sources is not None and settings.watch_seconds is not None:
        watcher = Watcher(registry, plane.changed, settings.watch_seconds, sources)
    await server.start()
    if control is not None:
        await control.start()
    http = None
    if settings.http_port is not None:
        try:
            http = await start_http(
                transport_plane,
                security,
                host=settings.host,
                port=settings.http_port,
                max_body=settings.max_message_bytes,
                reuse_port=settings.reuse_port,
                grace_seconds=settings.grace_seconds,
            )
        except OSError as error:
            await server.stop(None)
            if control is not None:
                await control.stop(None)
            await registry.close()
            address = f"{settings.host}:{settings.http_port}"
            raise OSError(
                f"cannot bind HTTP/REST to {address} ({error.strerror or error}); "
                "choose another --http-port, or --no-http"
            ) from None
    metrics_port = None
    if settings.metrics_port is not None:
        metrics_port = metrics.start(settings.host, settings.metrics_port)
    where = f"http://{settings.host}:{metrics_port}/metrics" if metrics_port else "off"
    where = settings.metrics_elsewhere or where
    if settings.loop_cpu is not None:
        affinity.pin_loop(settings.loop_cpu)
    # "HTTP on <url>" is what ServerProcess reads the HTTP port from (onnxforge.bench).
    log.info(
        "serving %d model(s) from %s on %s:%d (%s, %s%s, %s)%s (metrics: %s)",
        len(registry.entries),
        settings.repository,
        settings.host,
        port,
        "gRPC on threads" if isinstance(server, ThreadedServer) else "gRPC on the event loop",
        event_loop.name(),
        "" if settings.loop_cpu is None else f" on CPU {settings.loop_cpu}",
        _threads_said(settings.threads),
        f", HTTP on {http.url}" if http is not None else "",
        where,
    )
    running = Running(
        server,
        port,
        plane,
        registry,
        metrics,
        metrics_port,
        health,
        control_port=control_port,
        peers=peers,
        control=control,
        http=http,
    )
    if watcher is not None:
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
