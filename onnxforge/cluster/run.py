"""``onnxforge serve --ray``: the driver that keeps a repository's replicas serving on Ray.

It builds what is missing once, connects to the cluster (or starts Ray on this machine),
places and starts the replicas (``cluster.deployment``), prints the address, and watches
them until SIGTERM or SIGINT; then every replica drains as a single server does.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from typing import Any

from onnxforge.cluster.options import LOCAL, RayOptions
from onnxforge.server.app import Settings

log = logging.getLogger("onnxforge.cluster")
TICK_SECONDS = 0.5
# With autoscaling, a client connection is closed (GOAWAY, its calls finish, the client
# reconnects) after this long, so that clients spread over replicas added since.
CONNECTION_AGE_SECONDS = 30.0


def serve_metrics(deployment: Any, host: str, port: int) -> Any:
    """``/metrics`` on ``port``: every replica's metrics added up at each scrape."""
    from prometheus_client import CollectorRegistry

    from onnxforge.cluster.metrics import ClusterMetrics
    from onnxforge.server import metrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterMetrics(deployment.metrics_texts))
    return metrics.serve(host, port, registry)


def serve_on_ray(
    settings: Settings, options: RayOptions, level: str = "info", fmt: str = "text"
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    import ray

    from onnxforge.cluster.autoscale import Autoscaler
    from onnxforge.cluster.deployment import (
        Deployment,
        DeploymentError,
        free_cpus,
        live_nodes,
        replica_settings,
    )
    from onnxforge.server.builds import SpecBuilds

    # Replicas run in other processes (other machines): no path relative to this one.
    settings = dataclasses.replace(settings, repository=settings.repository.resolve())
    if settings.build_missing:  # once here, so that the replicas find everything built
        builds = SpecBuilds(settings.repository)
        for base in builds.bases():
            builds.build(base)
    ray.init(
        address=None if options.address == LOCAL else options.address,
        namespace=options.namespace,
        logging_level=logging.WARNING,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    replicas = options.replicas or len(live_nodes())
    scaler = Autoscaler(
        replicas,
        max(replicas, options.max_replicas or replicas),
        target_ongoing=options.target_ongoing,
        target_cpu=options.target_cpu,
        replica_cpus=options.cpus,
        upscale_delay=options.upscale_delay,
        downscale_delay=options.downscale_delay,
    )
    if scaler.enabled:  # reconnecting clients spread over the replicas added since
        settings = dataclasses.replace(settings, max_connection_age_s=CONNECTION_AGE_SECONDS)
    deployment = Deployment(
        replica_settings(settings, options.cpus),
        replicas,
        options.cpus,
        level=level,
        fmt=fmt,
        autoscaler=scaler,
        grace=settings.grace_seconds,
    )
    try:
        try:
            port = deployment.start()
        except DeploymentError as error:
            log.error("%s", error)
            return 1
        if scaler.enabled:
            needed = (scaler.maximum - replicas) * options.cpus
            free = free_cpus()
            if free < needed:  # a cluster autoscaler may add nodes; else they wait for CPUs
                log.warning(
                    "ray: --max-replicas %d needs %g more CPUs; the cluster has %g free now",
                    scaler.maximum,
                    needed,
                    free,
                )
        metrics_server = None
        if settings.metrics_port is not None:
            metrics_server = serve_metrics(deployment, settings.host, settings.metrics_port)
        http = deployment.http_port
        scheme = "https" if settings.security.tls else "http"
        log.info(
            "ray: serving %d model(s) from %s with %s replica(s) on %d node(s) at %s:%d%s "
            "(metrics: %s)",
            deployment.models(),
            settings.repository,
            f"{replicas} to {scaler.maximum}" if scaler.enabled else replicas,
            deployment.nodes(),
            settings.host,
            port,
            f", HTTP on {scheme}://{settings.host}:{http}" if http is not None else "",
            f"http://{settings.host}:{metrics_server.server_port}/metrics"
            if metrics_server is not None
            else "off",
        )
        while not stop.wait(TICK_SECONDS):
            try:
                deployment.tick()
            except Exception:  # the watch must go on: the replicas still serve
                log.exception("watching the replicas")
        log.info("ray: shutting down: every replica finishes its in-flight requests")
        deployment.stop(settings.grace_seconds)
        if metrics_server is not None:
            metrics_server.shutdown()
        return 0
    finally:
        ray.shutdown()
