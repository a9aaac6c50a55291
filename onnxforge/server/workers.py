"""``--workers N``: N server processes on one port, each with its own sessions.

The parent builds what is missing once, picks the ports (gRPC, and HTTP when on: every
worker listens on both, SO_REUSEPORT), starts the workers and tells each
where the others listen (see ``server.peers``), serves the metrics of all of them added
up (prometheus_client's multiprocess mode), and passes SIGTERM/SIGINT on: every worker
finishes its in-flight requests and the parent exits 0 when they all did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from onnxforge.server import affinity
from onnxforge.server import loop as event_loop
from onnxforge.server.app import Settings

log = logging.getLogger("onnxforge.server")
START_SECONDS = 600.0


def _claim_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Hold the public port (SO_REUSEPORT, not listening) so that every worker gets the same."""
    holder = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    return holder, holder.getsockname()[1]


def _on_parent_exit(link: Connection, stop: Callable[[], object]) -> None:
    with contextlib.suppress(EOFError, OSError):
        link.recv()
    log.warning("the parent process is gone: shutting down")
    stop()


def _worker(settings: Settings, index: int, link: Connection, level: str, fmt: str) -> None:
    from onnxforge.server import logs

    logs.configure(level, fmt, worker=index)  # every line says which worker wrote it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it sends SIGTERM
    event_loop.run(_serve_worker(settings, index, link))


async def _serve_worker(settings: Settings, index: int, link: Connection) -> None:
    from onnxforge.server.app import create_server

    running = await create_server(settings)
    assert running.control_port is not None and running.peers is not None
    link.send(running.control_port)
    running.peers.connect(
        address
        for address in await asyncio.to_thread(link.recv)
        if address != f"127.0.0.1:{running.control_port}"
    )
    log.info(
        "worker %d: pid %d, control port 127.0.0.1:%d", index, os.getpid(), running.control_port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    link.send("ready")
    # The parent never writes again: end of file means it died (even by SIGKILL), and a
    # worker must not outlive it holding the port.
    threading.Thread(
        target=_on_parent_exit,
        args=(link, lambda: loop.call_soon_threadsafe(stop.set)),
        daemon=True,
    ).start()
    await stop.wait()
    log.info("worker %d: shutting down: finishing in-flight requests", index)
    await running.stop(settings.grace_seconds)


def run_workers(
    settings: Settings,
    workers: int,
    level: str = "info",
    fmt: str = "text",
    pin_loops: bool = False,
) -> int:
    """Serve with ``workers`` processes until SIGTERM/SIGINT; returns the exit code.
    ``pin_loops``: each worker's event loop on a CPU of its own (``server.affinity``)."""
    from prometheus_client import CollectorRegistry, multiprocess

    from onnxforge.server import logs, metrics
    from onnxforge.server.builds import SpecBuilds

    logs.configure(level, fmt, parent=True)
    if settings.build_missing:  # once here, so that the workers find everything built
        builds = SpecBuilds(settings.repository)
        for base in builds.bases():
            builds.build(base)
    holder, port = _claim_port(settings.host, settings.port)
    http_holder, http_port = None, None
    if settings.http_port is not None:
        http_holder, http_port = _claim_port(settings.host, settings.http_port)
    metrics_dir = tempfile.TemporaryDirectory(prefix="onnxforge-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name  # inherited by the workers
    # Served before the workers start, so that each can say where in its start-up line.
    metrics_port, metrics_where = None, "off"
    if settings.metrics_port is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        metrics_port = metrics.serve(settings.host, settings.metrics_port, registry).server_port
        metrics_where = (
            f"http://{settings.host}:{metrics_port}/metrics, served by the parent for all workers"
        )
    worker_settings = dataclasses.replace(
        settings,
        port=port,
        http_port=http_port,
        reuse_port=True,
        control_port=True,
        metrics_port=None,
        metrics_elsewhere=metrics_where,
    )
    context = multiprocessing.get_context("spawn")
    # Each worker's loop on a CPU of its own, chosen here at once so that no two collide.
    loop_cpus = affinity.loop_cpus(workers) if pin_loops else []
    links, processes = [], []
    for index in range(workers):
        parent_end, child_end = context.Pipe()
        # Every worker may build (on a load, or a spec changed under --watch): writes are
        # atomic and builds deterministic, so two workers building at once write the same.
        process = context.Process(
            target=_worker,
            args=(
                dataclasses.replace(
                    worker_settings, loop_cpu=loop_cpus[index] if loop_cpus else None
                ),
                index,
                child_end,
                level,
                fmt,
            ),
            name=f"onnxforge-worker-{index}",
        )
        process.start()
        links.append(parent_end)
        processes.append(process)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        ports = [link.recv() if link.poll(START_SECONDS) else None for link in links]
        if None in ports or not all(process.is_alive() for process in processes):
            raise RuntimeError("a worker failed to start (see its log above)")
        addresses = [f"127.0.0.1:{control}" for control in ports]
        for link in links:
            link.send(addresses)
        for link in links:
            link.recv()  # "ready": peers known
        scheme = "https" if settings.security.tls else "http"
        log.info(
            "serving with %d workers on %s:%d%s (metrics: %s)",
            workers,
            settings.host,
            port,
            f", HTTP on {scheme}://{settings.host}:{http_port}" if http_port is not None else "",
            metrics_port or "off",
        )
        while not stop.wait(0.2):
            if not all(process.is_alive() for process in processes):
                log.error("a worker exited; stopping the others")
                break
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(settings.grace_seconds + 30)
        holder.close()
        if http_holder is not None:
            http_holder.close()
        with contextlib.suppress(OSError):
            metrics_dir.cleanup()
    codes = [process.exitcode for process in processes]
    log.info("stopped %d workers (exit codes %s)", workers, codes)
    return 0 if all(code == 0 for code in codes) else 1
