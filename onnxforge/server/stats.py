"""Per-model statistics for ModelStatistics: real counts and times, in nanoseconds.

Plain values (no protocol types): the data plane answers with :class:`VersionStats`, each
transport writes them in its own format, and :func:`merge` adds up what several worker
processes report.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from onnxforge.server.batcher import BatchStats
from onnxforge.server.metrics import (
    BATCH_BUCKETS,
    LATENCY_BUCKETS,
    Metrics,
    ModelMetrics,
    PendingHistogram,
)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows answered
    execution_count: int = 0  # session runs
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))

    def copy(self) -> ModelStats:
        copied = ModelStats()
        copied.add(self)
        return copied

    def add(self, other: ModelStats) -> None:
        """Add ``other``'s counts and times to these (the latest inference wins)."""
        for name in ("success", "fail", "queue", "compute_infer"):
            part: Duration = getattr(other, name)
            getattr(self, name).add(part.ns, part.count)
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for size, duration in other.batches.items():
            self.batches[size].add(duration.ns, duration.count)


@dataclass(frozen=True)
class VersionStats:
    """The statistics of one version of one model, as ModelStatistics reports them."""

    name: str
    version: str
    stats: ModelStats


def merge(parts: Iterable[VersionStats]) -> list[VersionStats]:
    """Sum per (model, version) what several workers report, sorted by model and version."""
    merged: dict[tuple[str, str], ModelStats] = {}
    for part in parts:
        key = (part.name, part.version)
        if key in merged:
            merged[key].add(part.stats)
        else:
            merged[key] = part.stats.copy()
    return [VersionStats(name, version, merged[name, version]) for name, version in sorted(merged)]


class _Pending:
    """One model's metric observations not yet added to its Prometheus series."""

    __slots__ = ("batch_rows", "compute_seconds", "queue_seconds", "request_seconds", "requests")

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.request_seconds = PendingHistogram(LATENCY_BUCKETS)
        self.queue_seconds = PendingHistogram(LATENCY_BUCKETS)
        self.compute_seconds = PendingHistogram(LATENCY_BUCKETS)
        self.batch_rows = PendingHistogram(BATCH_BUCKETS)

    def add_to(self, series: ModelMetrics) -> None:
        for status, count in self.requests.items():
            series.requests(status).inc(count)
        self.request_seconds.add_to(series.request_seconds)
        self.queue_seconds.add_to(series.queue_seconds)
        self.compute_seconds.add_to(series.compute_seconds)
        self.batch_rows.add_to(series.batch_rows)


class Statistics:
    """Thread-safe counters keyed by (model, version), and the Prometheus series.

    Every request is observed in four histograms and a counter, and prometheus_client takes
    a lock per observation (about 5 us a request, a tenth of a quick model's whole path in
    process). So the observations are kept as plain counts under this class's one lock and
    added to the series when they are read (:meth:`flush`, run by every scrape): a scrape
    sees every request answered before it. A ``--workers`` worker's series live in
    prometheus_client's multiprocess files, which the parent reads without asking the
    worker, so a worker observes at once.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._lock = threading.Lock()
        self.models: dict[tuple[str, str], ModelStats] = defaultdict(ModelStats)
        self.metrics = metrics
        self._by_model: dict[str, ModelMetrics] = {}
        self._pending: dict[str, _Pending] | None = None  # None: observe at once
        if metrics is not None and not metrics.shared:
            self._pending = {}
            metrics.before_collect(self.flush)

    def _series(self, model: str) -> ModelMetrics:
        assert self.metrics is not None
        if model not in self._by_model:
            self._by_model[model] = ModelMetrics(self.metrics, model)
        return self._by_model[model]

    def _pending_for(self, model: str) -> _Pending:  # locked
        assert self._pending is not None
        pending = self._pending.get(model)
        if pending is None:
            pending = self._pending[model] = _Pending()
        return pending

    def flush(self) -> None:
        """Add the observations kept since the last flush to the Prometheus series."""
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
        for model, observed in pending.items():
            observed.add_to(self._series(model))

    def snapshot(self) -> dict[tuple[str, str], ModelStats]:
        """A copy of every version's counts, consistent with itself."""
        with self._lock:
            return {key: stats.copy() for key, stats in self.models.items()}

    def request(self, model: str, version: str, status: str, ns: int, rows: int) -> None:
        """One answered request; ``status`` is "OK", an error's code name or "CANCELLED"."""
        ok = status == "OK"
        with self._lock:
            stats = self.models[(model, version)]
            (stats.success if ok else stats.fail).add(ns)
            if ok:
                stats.inference_count += rows
            stats.last_inference_ms = int(time.time() * 1000)
            if self._pending is not None:
                pending = self._pending_for(model)
                pending.requests[status] = pending.requests.get(status, 0) + 1
                pending.request_seconds.observe(ns / 1e9)
                return
        if self.metrics is not None:
            series = self._series(model)
            series.requests(status).inc()
            series.request_seconds.observe(ns / 1e9)

    def batch(self, model: str, version: str, batch: BatchStats) -> None:
        with self._lock:
            stats = self.models[(model, version)]
            stats.execution_count += 1
            for queued in batch.queue_ns:
                stats.queue.add(queued)
            stats.compute_infer.add(batch.compute_ns, batch.requests)
            stats.batches[batch.rows].add(batch.compute_ns)
            if self._pending is not None:
                _observe_batch(self._pending_for(model), batch)
                return
        if self.metrics is not None:
            _observe_batch(self._series(model), batch)

    def unbatched(self, model: str, version: str, compute_ns: int, rows: int) -> None:
        self.batch(model, version, BatchStats(1, rows, [0], compute_ns))


def _observe_batch(series: _Pending | ModelMetrics, batch: BatchStats) -> None:
    for queued in batch.queue_ns:
        series.queue_seconds.observe(queued / 1e9)
    series.compute_seconds.observe(batch.compute_ns / 1e9)
    series.batch_rows.observe(batch.rows)
