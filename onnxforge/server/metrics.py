"""Prometheus metrics, served over HTTP on ``--metrics-port`` at ``/metrics`` only.

Each server has a registry of its own (tests run several servers in one process). Any
other path is 404: a probe of ``/v2/health/ready`` pointed at the metrics port by mistake
must fail, not pass whatever the server's state (prometheus_client's own server answers
every path with the metrics).
"""

from __future__ import annotations

import bisect
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

PATH = "/metrics"

# Seconds: from 50 us to 10 s, roughly x2.5 apart.
LATENCY_BUCKETS = (
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _BeforeCollect(Collector):
    """Registered first, so that a scrape runs its hooks before any series is read."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def collect(self) -> Iterator[Metric]:
        for hook in self.hooks:
            hook()
        return iter(())

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._before_collect = _BeforeCollect()
        self.registry.register(self._before_collect)
        self.requests = Counter(
            "onnxforge_requests",
            "Inference requests by model and status (OK, or the error code as gRPC names it).",
            ["model", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "onnxforge_request_seconds",
            "Time from receiving a request to answering it.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "onnxforge_queue_seconds",
            "Time a request waited for its batch to start.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "onnxforge_compute_seconds",
            "Time of one session.run.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "onnxforge_batch_rows",
            "Rows per session.run.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        # With --workers: the fewest any live worker has, i.e. what the server as a whole has.
        self.models_loaded = Gauge(
            "onnxforge_models_loaded",
            "Models in the READY state (with several workers: in every worker).",
            registry=self.registry,
            multiprocess_mode="livemin",
        )

    @property
    def shared(self) -> bool:
        """Whether the series are written to prometheus_client's multiprocess files (a
        ``--workers`` worker): the parent reads those, not this registry."""
        return "PROMETHEUS_MULTIPROC_DIR" in os.environ

    def before_collect(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` at every collection (a scrape), before the series are read."""
        self._before_collect.hooks.append(hook)

    def start(self, host: str, port: int) -> int:
        """Serve /metrics; returns the bound port (``port=0`` picks one)."""
        self._server = serve(host, port, self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()


class PendingHistogram:
    """Observations of one histogram series since they were last added to it: a bucket
    count and a sum, without prometheus_client's per-observation locks (the caller holds a
    lock of its own)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = (*bounds, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus' bucket is the first bound with value <= bound: bisect_left's index.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, series: Histogram) -> None:
        """Add what was observed to ``series`` (a labelled child), and start again."""
        if not any(self.counts):
            return
        # prometheus_client keeps a child's counts per bucket (cumulated when collected):
        # the same counts as observe() would have made, added at once.
        buckets = series._buckets
        for index, count in enumerate(self.counts):
            if count:
                buckets[index].inc(count)
        series._sum.inc(self.sum)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0


class ModelMetrics:
    """One model's labelled series, looked up once rather than on every request."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics = metrics
        self.model = model
        self.request_seconds = metrics.request_seconds.labels(model)
        self.queue_seconds = metrics.queue_seconds.labels(model)
        self.compute_seconds = metrics.compute_seconds.labels(model)
        self.batch_rows = metrics.batch_rows.labels(model)
        self._requests: dict[str, Counter] = {}

    def requests(self, status: str) -> Counter:
        if status not in self._requests:
            self._requests[status] = self.metrics.requests.labels(self.model, status)
        return self._requests[status]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def serve(host: str, port: int, registry: Collector) -> WSGIServer:
    """Serve ``registry`` at /metrics (404 elsewhere) from a daemon thread; ``port=0`` picks."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: the metrics are at {PATH}\n".encode()]
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    server_class = _Server6 if ":" in host else _Server
    server: WSGIServer = make_server(
        host.strip("[]"), port, app, server_class, handler_class=_Quiet
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
