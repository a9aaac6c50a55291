"""The replicas' Prometheus metrics, added up and served by the driver on ``--metrics-port``.

Each replica keeps its own registry (``server.metrics``) and serves no metrics port of its
own; at every scrape the driver asks each serving replica for its metrics as text (a Ray call,
so no port per replica has to be found or opened) and adds them up: counters and histograms
(buckets, sums, counts) are summed per series; a gauge takes the smallest value of any
replica, which for ``onnxforge_models_loaded`` means "ready in every replica", as with
``--workers``; ``_created`` timestamps take the earliest. ``onnxforge_replicas`` says how
many replicas answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger("onnxforge.cluster")

Series = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


def merge(texts: Iterable[str]) -> list[Metric]:
    """The metrics of several servers (Prometheus text format) as one server's."""
    families: dict[str, tuple[Metric, dict[Series, float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            _, values = families.setdefault(family.name, (family, {}))
            smallest = family.type == "gauge"
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in values:
                    values[key] = sample.value
                elif smallest or sample.name.endswith("_created"):
                    values[key] = min(values[key], sample.value)
                else:
                    values[key] += sample.value
    merged = []
    for family, values in families.values():
        out = Metric(family.name, family.documentation, family.type, family.unit)
        for (name, labels), value in values.items():
            out.add_sample(name, dict(labels), value)
        merged.append(out)
    return merged


class ClusterMetrics(Collector):
    """A collector whose every collect() reads the replicas' metrics through ``read``."""

    def __init__(self, read: Callable[[], list[str]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        try:
            texts = self._read()
        except Exception:  # a scrape must not take the driver down; say so, answer empty
            log.exception("reading the replicas' metrics")
            texts = []
        yield from merge(texts)
        replicas = GaugeMetricFamily(
            "onnxforge_replicas", "Replicas whose metrics this scrape added up."
        )
        replicas.add_metric([], len(texts))
        yield replicas
