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
from onnxforge.server.metrics import Metrics, ModelMetrics


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


class Statistics:
    """Thread-safe counters keyed by (model, version)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._lock = threading.Lock()
        self.models: dict[tuple[str, str], ModelStats] = defaultdict(ModelStats)
        self.metrics = metrics
        self._by_model: dict[str, ModelMetrics] = {}

    def _series(self, model: str) -> ModelMetrics:
        assert self.metrics is not None
        if model not in self._by_model:
            self._by_model[model] = ModelMetrics(self.metrics, model)
        return self._by_model[model]

    def snapshot(self) -> dict[tuple[str, str], ModelStats]:
        """A copy of every version's counts, consistent with itself."""
        with self._lock:
            return {key: stats.copy() for key, stats in self.models.items()}

    def request(self, model: str, version: str, status: str, ns: int, rows: int) -> None:
        """One answered request; ``status`` is "OK", an error's code name or "CANCELLED"."""
        ok = status == "OK"
        if self.metrics is not None:
            series = self._series(model)
            series.requests(status).inc()
            series.request_seconds.observe(ns / 1e9)
        with self._lock:
            stats = self.models[(model, version)]
            (stats.success if ok else stats.fail).add(ns)
            if ok:
                stats.inference_count += rows
            stats.last_inference_ms = int(time.time() * 1000)

    def batch(self, model: str, version: str, batch: BatchStats) -> None:
        if self.metrics is not None:
            series = self._series(model)
            for queued in batch.queue_ns:
                series.queue_seconds.observe(queued / 1e9)
            series.compute_seconds.observe(batch.compute_ns / 1e9)
            series.batch_rows.observe(batch.rows)
        with self._lock:
            stats = self.models[(model, version)]
            stats.execution_count += 1
            for queued in batch.queue_ns:
                stats.queue.add(queued)
            stats.compute_infer.add(batch.compute_ns, batch.requests)
            stats.batches[batch.rows].add(batch.compute_ns)

    def unbatched(self, model: str, version: str, compute_ns: int, rows: int) -> None:
        self.batch(model, version, BatchStats(1, rows, [0], compute_ns))
