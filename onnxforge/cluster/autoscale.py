"""How many replicas the load calls for: Ray Serve's rule and Kubernetes' CPU rule.

Ray Serve scales a deployment to ``ceil(ongoing requests / target_ongoing_requests)``
replicas, within its minimum and maximum, once that number has stood above (or below) the
current count for ``upscale_delay_s`` (or ``downscale_delay_s``). onnxforge keeps the rule
and its names, applied to its own servers (``cluster.deployment``), which report the mean
number of requests in their handlers (``server.drain``). That number is small for a quick
model even when the replica's cores are saturated (a request spends most of its time in the
transport, not the handler), so a second rule, the one a HorizontalPodAutoscaler applies,
asks for ``ceil(CPU cores used / (target_cpu x CPUs per replica))``; the count is the larger
of the two. Pure logic, no Ray: tested on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Autoscaler:
    """Decides the replica count from the mean number of requests in flight."""

    minimum: int
    maximum: int
    target_ongoing: float = 2.0  # requests in flight per replica aimed at
    target_cpu: float = 0.8  # share of each replica's reserved CPUs aimed at
    replica_cpus: float = 1.0  # the CPUs each replica reserves
    upscale_delay: float = 5.0  # seconds the load must call for more before they start
    downscale_delay: float = 60.0  # ... for fewer before one is drained
    _wanted_since: tuple[int, float] | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.maximum > self.minimum

    def wanted(self, ongoing: float, cores: float = 0.0) -> int:
        """What the load calls for now (``ongoing`` requests in flight and ``cores`` used,
        both summed over the replicas), within the bounds."""
        by_requests = math.ceil(ongoing / self.target_ongoing) if ongoing > 0 else 0
        by_cpu = math.ceil(cores / (self.target_cpu * self.replica_cpus)) if cores > 0 else 0
        return max(self.minimum, min(self.maximum, max(by_requests, by_cpu)))

    def decide(self, now: float, ongoing: float, current: int, cores: float = 0.0) -> int:
        """The count to have: ``current`` until the load has called for another long enough.

        Scaling up goes straight to what the load calls for; scaling down drains one
        replica at a time, each after its own delay.
        """
        wanted = self.wanted(ongoing, cores)
        if wanted == current:
            self._wanted_since = None
            return current
        up = wanted > current
        since = self._wanted_since
        if since is None or (since[0] > current) != up:  # the call changed direction
            self._wanted_since = (wanted, now)
            return current
        if now - since[1] < (self.upscale_delay if up else self.downscale_delay):
            return current
        self._wanted_since = None
        return wanted if up else current - 1
