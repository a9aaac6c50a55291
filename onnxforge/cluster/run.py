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

from onnxforge.cluster.options import LOCAL, RayOptions
from onnxforge.server.app import Settings

log = logging.getLogger("onnxforge.cluster")
TICK_SECONDS = 0.5


def serve_on_ray(
    settings: Settings, options: RayOptions, level: str = "info", fmt: str = "text"
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    import ray

    from onnxforge.cluster.deployment import (
        Deployment,
        DeploymentError,
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
    deployment = Deployment(
        replica_settings(settings, options.cpus), replicas, options.cpus, level=level, fmt=fmt
    )
    try:
        try:
            port = deployment.start()
        except DeploymentError as error:
            log.error("%s", error)
            return 1
        http = deployment.http_port
        scheme = "https" if settings.security.tls else "http"
        log.info(
            "ray: serving %d model(s) from %s with %d replica(s) on %d node(s) at %s:%d%s",
            deployment.models(),
            settings.repository,
            replicas,
            deployment.nodes(),
            settings.host,
            port,
            f", HTTP on {scheme}://{settings.host}:{http}" if http is not None else "",
        )
        while not stop.wait(TICK_SECONDS):
            try:
                deployment.tick()
            except Exception:  # the watch must go on: the replicas still serve
                log.exception("watching the replicas")
        log.info("ray: shutting down: every replica finishes its in-flight requests")
        deployment.stop(settings.grace_seconds)
        return 0
    finally:
        ray.shutdown()
