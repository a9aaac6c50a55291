"""cluster.metrics: several replicas' Prometheus metrics added up as one server's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from onnxforge.cluster.metrics import ClusterMetrics, merge
from onnxforge.server.metrics import Metrics


def replica(requests: int, seconds: list[float], models_loaded: int) -> str:
    """One replica's /metrics text, from onnxforge's own registry."""
    metrics = Metrics()
    for _ in range(requests):
        metrics.requests.labels("tiny", "OK").inc()
    metrics.requests.labels("tiny", "INVALID_ARGUMENT").inc()
    for value in seconds:
        metrics.request_seconds.labels("tiny").observe(value)
    metrics.models_loaded.set(models_loaded)
    return generate_latest(metrics.registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_and_histograms_add_up_and_the_gauge_takes_the_least() -> None:
    one = replica(3, [0.001, 0.2], models_loaded=2)
    two = replica(5, [0.003], models_loaded=1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterMetrics(lambda: [one, two]))
    got = samples(generate_latest(registry).decode())
    want_one, want_two = samples(one), samples(two)
    ok = ("onnxforge_requests_total", (("model", "tiny"), ("status", "OK")))
    assert got[ok] == 8.0 == want_one[ok] + want_two[ok]
    assert got[("onnxforge_request_seconds_count", (("model", "tiny"),))] == 3.0
    total = got[("onnxforge_request_seconds_sum", (("model", "tiny"),))]
    assert abs(total - 0.204) < 1e-9
    for key, value in got.items():  # every bucket the sum of the two replicas' buckets
        if key[0] == "onnxforge_request_seconds_bucket":
            assert value == want_one[key] + want_two[key], key
    assert got[("onnxforge_models_loaded", ())] == 1.0  # ready in every replica: the least
    created = ("onnxforge_requests_created", (("model", "tiny"), ("status", "OK")))
    assert got[created] == min(want_one[created], want_two[created])
    assert got[("onnxforge_replicas", ())] == 2.0


def test_no_replica_answering_is_an_empty_scrape_that_says_so() -> None:
    def broken() -> list[str]:
        raise RuntimeError("the cluster is gone")

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterMetrics(broken))
    assert samples(generate_latest(registry).decode()) == {("onnxforge_replicas", ()): 0.0}
    assert merge([]) == []
