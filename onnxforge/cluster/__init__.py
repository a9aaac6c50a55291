"""The same repository served on a Ray cluster (``onnxforge serve --ray``).

Each replica is onnxforge's own gRPC server (``server.app``) in a Ray actor that Ray
restarts when it dies (``cluster.replica``); the replicas on one node share its public port
(SO_REUSEPORT, as ``--workers`` does) and reach each other as peers (``server.peers``), so
that a load, an unload, readiness and statistics are the whole deployment's. The driver
(``cluster.run``, ``cluster.deployment``) places them, restarts their serving and rewires
them, scales them by load within ``--replicas``..``--max-replicas`` (``cluster.autoscale``)
and serves their metrics added up (``cluster.metrics``). Ray Serve's gRPC proxy is not on
the request path: it measured several times slower than the plain server (see
``benchmarks/cluster.py`` and the README).

Importing this package imports neither Ray nor the server; :func:`serve_on_ray` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxforge.cluster.options import SERVING, RayOptions

if TYPE_CHECKING:
    from onnxforge.server.app import Settings

__all__ = ["SERVING", "RayOptions", "serve_on_ray"]


def serve_on_ray(
    settings: Settings, options: RayOptions, level: str = "info", fmt: str = "text"
) -> int:
    """Serve ``settings.repository`` on Ray until SIGTERM/SIGINT; returns the exit code."""
    from onnxforge.cluster import run

    return run.serve_on_ray(settings, options, level, fmt)
