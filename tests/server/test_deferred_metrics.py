"""Metrics kept as plain counts on the hot path and added to the Prometheus series when a
scrape reads them: what a scrape shows is exactly what observing each value at once shows
(prometheus_client's own ``observe``, on a registry of its own, is the reference)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from onnxforge.server.batcher import BatchStats
from onnxforge.server.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics
from onnxforge.server.stats import Statistics


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def reference_registry(
    requests: list[tuple[str, str, int]], batches: list[tuple[str, BatchStats]]
) -> CollectorRegistry:
    """The same observations, each made at once with prometheus_client's own metrics."""
    registry = CollectorRegistry()
    counter = Counter("onnxforge_requests", "", ["model", "status"], registry=registry)
    seconds = {
        name: Histogram(name, "", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        for name in ("onnxforge_request_seconds", "onnxforge_queue_seconds",
                     "onnxforge_compute_seconds")
    }  # fmt: skip
    rows = Histogram("onnxforge_batch_rows", "", ["model"], buckets=BATCH_BUCKETS,
                     registry=registry)  # fmt: skip
    for model, status, ns in requests:
        counter.labels(model, status).inc()
        seconds["onnxforge_request_seconds"].labels(model).observe(ns / 1e9)
    for model, batch in batches:
        for queued in batch.queue_ns:
            seconds["onnxforge_queue_seconds"].labels(model).observe(queued / 1e9)
        seconds["onnxforge_compute_seconds"].labels(model).observe(batch.compute_ns / 1e9)
        rows.labels(model).observe(batch.rows)
    return registry


def observed_series(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    wanted = ("onnxforge_requests_total", "onnxforge_request_seconds", "onnxforge_queue_seconds",
              "onnxforge_compute_seconds", "onnxforge_batch_rows")  # fmt: skip
    return {key: value for key, value in samples(registry).items() if key[0].startswith(wanted)}


def assert_same(got: dict[tuple[str, tuple], float], want: dict[tuple[str, tuple], float]) -> None:
    """Every count exactly; sums to rounding (added in another order)."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key[0].endswith("_sum"):
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value, key


def random_load(seed: int) -> tuple[list[tuple[str, str, int]], list[tuple[str, BatchStats]]]:
    rng = np.random.default_rng(seed)
    models, statuses = ("a", "b"), ("OK", "OK", "OK", "INVALID_ARGUMENT", "CANCELLED")
    # Log-uniform from 10 us to 20 s, and exact bucket bounds (value <= bound counts in).
    ns = [int(v) for v in 10 ** rng.uniform(4, 10.3, 400)] + [int(b * 1e9) for b in LATENCY_BUCKETS]
    requests = [(str(rng.choice(models)), str(rng.choice(statuses)), n) for n in ns]
    batches = []
    for _ in range(150):
        size = int(rng.integers(1, 5))
        queued = [int(v) for v in 10 ** rng.uniform(3, 8, size)]
        batch = BatchStats(size, int(rng.choice([1, 2, 3, 8, 64, 100, 2048])), queued,
                           int(10 ** rng.uniform(4, 9)))  # fmt: skip
        batches.append((str(rng.choice(models)), batch))
    return requests, batches


def test_a_scrape_shows_exactly_what_observing_at_once_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    statistics = Statistics(metrics)
    requests, batches = random_load(1)
    half = len(requests) // 2
    for model, status, ns in requests[:half]:
        statistics.request(model, "1", status, ns, 1)
    for model, batch in batches[:70]:
        statistics.batch(model, "1", batch)
    # Nothing has reached the series yet; the first scrape adds it all.
    first = observed_series(metrics.registry)
    assert_same(first, observed_series(reference_registry(requests[:half], batches[:70])))
    for model, status, ns in requests[half:]:
        statistics.request(model, "1", status, ns, 1)
    for model, batch in batches[70:]:
        statistics.batch(model, "1", batch)
    # The second scrape adds only what came since (nothing counted twice).
    want = observed_series(reference_registry(requests, batches))
    assert_same(observed_series(metrics.registry), want)
    assert_same(observed_series(metrics.registry), want)


def test_concurrent_observers_and_scrapes_lose_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    statistics = Statistics(metrics)
    per_thread, threads = 2000, 4
    done = threading.Event()

    def observe() -> None:
        for i in range(per_thread):
            statistics.request("m", "1", "OK", 1000 + i, 1)
            statistics.unbatched("m", "1", 5000, 1)

    def scrape() -> None:
        while not done.is_set():
            generate_latest(metrics.registry)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    workers = [threading.Thread(target=observe) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    scraper.join()
    got = samples(metrics.registry)
    total = float(per_thread * threads)
    assert got[("onnxforge_requests_total", (("model", "m"), ("status", "OK")))] == total
    assert got[("onnxforge_request_seconds_count", (("model", "m"),))] == total
    assert got[("onnxforge_batch_rows_count", (("model", "m"),))] == total
    want_sum = threads * sum(1000 + i for i in range(per_thread)) / 1e9
    assert got[("onnxforge_request_seconds_sum", (("model", "m"),))] == pytest.approx(want_sum)


def test_a_worker_writing_shared_files_observes_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    """With --workers the parent reads the series from files, never asking the worker to
    flush: so a worker's observations must be in its series at once."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = Metrics()
    statistics = Statistics(metrics)
    statistics.request("m", "1", "OK", 2_000_000, 1)
    child = metrics.request_seconds.labels("m")
    assert sum(bucket.get() for bucket in child._buckets) == 1  # no scrape happened
