"""The points ``onnxforge tune`` measures, what it chooses among them, and in which order.

A point is server flags (:class:`Flags`) and a model's batching settings (:class:`Batching`),
with one :class:`Measured` per concurrency level. :func:`choose` applies the objective
(:data:`OBJECTIVE`); :func:`flag_grid` and :func:`batch_sizes` say what is tried.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

P99_FACTOR = 2.0
#: Client connections at most (clients share them round-robin), as several processes would.
CONNECTIONS = 8
#: The shortest measured stretch per level, and the server start assumed before one is seen.
MIN_SECONDS = 0.5
MAX_SECONDS = 3.0
START_GUESS = 2.0
#: Points the budget should leave room for when it sets the seconds per level.
TARGET_POINTS = 10
#: Share of the budget the server flags may take when batching settings follow.
FLAGS_SHARE = 0.6

OBJECTIVE = (
    "highest rows/s at the highest concurrency, among the points answering every request "
    f"OK whose p99 at the lowest concurrency is at most {P99_FACTOR:g}x the best p99 there"
)


class TuneError(ValueError):
    """Something the user asked for that cannot be tuned (one line)."""


#: ``--grpc-threads`` of the thread-pool transport point (``serve``'s ``auto`` takes as many).
POOL_THREADS = 64


@dataclass(frozen=True)
class Flags:
    """``onnxforge serve`` flags: intra-op threads (0: ``serve``'s default, a thread per
    usable core), spinning (None: not applicable, one thread has no pool to spin in), worker
    processes, and the gRPC transport (``--grpc-threads``; 0: the event loop)."""

    threads: int
    spinning: bool | None
    workers: int
    grpc_threads: int = 0

    def args(self) -> list[str]:
        args = ["--threads", str(self.threads), "--workers", str(self.workers)]
        if self.spinning is not None:
            args.append("--spinning" if self.spinning else "--no-spinning")
        if self.grpc_threads:
            args += ["--grpc-threads", str(self.grpc_threads)]
        return args


@dataclass(frozen=True)
class Batching:
    """The ``serving`` settings of a model (``config.pbtxt``)."""

    max_batch_size: int
    max_queue_delay_us: int
    instances: int

    def config(self) -> dict[str, Any]:
        """As a Triton ``ModelConfig`` for a load's ``config`` parameter."""
        config: dict[str, Any] = {
            "max_batch_size": self.max_batch_size,
            "instance_group": [{"count": self.instances, "kind": "KIND_CPU"}],
        }
        if self.max_batch_size > 0:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": self.max_queue_delay_us}
        return config

    def pbtxt(self) -> str:
        """As ``config.pbtxt`` lines."""
        text = f"max_batch_size: {self.max_batch_size}\n"
        if self.max_batch_size > 0:
            text += (
                f"dynamic_batching {{ max_queue_delay_microseconds: {self.max_queue_delay_us} }}\n"
            )
        return text + f"instance_group [ {{ count: {self.instances} kind: KIND_CPU }} ]\n"


@dataclass
class Measured:
    """One concurrency level of one point."""

    concurrency: int
    requests: int
    statuses: dict[str, int]
    seconds: float
    throughput_rps: float
    rows_per_second: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_request: float
    client_cpu_ms_per_request: float
    first_error: str | None = None


@dataclass
class Point:
    """One setting and what it measured."""

    index: int
    stage: str  # "flags" or "batching"
    flags: Flags
    batching: Batching
    setup_seconds: float  # server start (flags) or model load (batching)
    levels: list[Measured] = field(default_factory=list)
    eligible: bool = False  # meets the latency condition of the objective

    @property
    def ok(self) -> bool:
        return bool(self.levels) and all(
            level.requests > 0 and set(level.statuses) == {"OK"} for level in self.levels
        )

    def at(self, concurrency: int) -> Measured:
        return next(level for level in self.levels if level.concurrency == concurrency)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "stage": self.stage,
            **asdict(self.flags),
            **asdict(self.batching),
            "setup_seconds": self.setup_seconds,
            "ok": self.ok,
            "eligible": self.eligible,
            "levels": [
                {key: _finite(value) for key, value in asdict(level).items()}
                for level in self.levels
            ],
        }


def _finite(value: Any) -> Any:
    """NaN (a percentile of no answers) as None: JSON has no NaN."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass(frozen=True)
class Plan:
    rows: int
    concurrencies: tuple[int, ...]
    budget: float
    seconds: float  # measured seconds per level
    warmup: float  # unmeasured seconds before each level
    cores: int
    max_points: int | None = None

    @classmethod
    def make(
        cls,
        rows: int,
        concurrencies: Sequence[int],
        budget: float,
        cores: int,
        max_points: int | None = None,
    ) -> Plan:
        """Seconds per level from the budget; TuneError when not even one point fits."""
        levels = len(concurrencies)
        share = budget / TARGET_POINTS - START_GUESS
        seconds = min(MAX_SECONDS, max(MIN_SECONDS, share / levels / 1.25))
        plan = cls(rows, tuple(concurrencies), budget, seconds, seconds / 4, cores, max_points)
        least = plan.point_seconds(START_GUESS)
        if budget < least:
            raise TuneError(
                f"--budget {budget:g} s is too small for one point: a server start and "
                f"{levels} level(s) of {plan.warmup:g} + {seconds:g} s need about {least:.0f} s"
            )
        return plan

    def point_seconds(self, setup: float) -> float:
        return setup + len(self.concurrencies) * (self.warmup + self.seconds)


@dataclass
class Result:
    model: str
    plan: Plan
    original: Batching
    points: list[Point]
    chosen: Point
    p99_limit_ms: float
    elapsed_seconds: float
    batchable: bool
    busy_cores_before: float = 0.0  # what other processes used just before the search

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "rows_per_request": self.plan.rows,
            "concurrencies": list(self.plan.concurrencies),
            "budget_seconds": self.plan.budget,
            "elapsed_seconds": self.elapsed_seconds,
            "seconds_per_level": self.plan.seconds,
            "warmup_seconds": self.plan.warmup,
            "cores_to_use": self.plan.cores,
            "busy_cores_before": self.busy_cores_before,
            "model_serving": asdict(self.original),
            "objective": {
                "text": OBJECTIVE,
                "low_concurrency": min(self.plan.concurrencies),
                "high_concurrency": max(self.plan.concurrencies),
                "p99_factor": P99_FACTOR,
                "p99_limit_ms": self.p99_limit_ms,
            },
            "points": [point.as_dict() for point in self.points],
            "chosen": self.chosen.index,
            "serving": asdict(self.chosen.batching),
            "server_flags": asdict(self.chosen.flags),
        }


# ------------------------------------------------------------------------------ the objective


def choose(points: Sequence[Point], concurrencies: Sequence[int]) -> tuple[Point, float]:
    """The best point by :data:`OBJECTIVE` (marking ``eligible``) and the p99 limit in ms."""
    low, high = min(concurrencies), max(concurrencies)
    valid = [point for point in points if point.ok]
    if not valid:
        errors = [level.first_error for p in points for level in p.levels if level.first_error]
        raise RuntimeError(f"no point answered every request: {errors[0] if errors else '-'}")
    limit = P99_FACTOR * min(point.at(low).p99_ms for point in valid)
    for point in points:
        point.eligible = point.ok and point.at(low).p99_ms <= limit
    best = max(
        (point for point in points if point.eligible),
        key=lambda p: (p.at(high).rows_per_second, -p.at(high).p99_ms, -p.index),
    )
    return best, limit


# ------------------------------------------------------------------------------ the grid


def flag_grid(cores: int) -> list[Flags]:
    """Server flags in the order they are measured: ``serve``'s defaults first, then gRPC on
    the thread pool, one thread, a thread per core, a worker per core, spinning; then the
    cores shared out among 2 and ``cores`` workers, and a thread per core in every worker."""
    workers = sorted({1, min(2, cores), cores})
    first = [
        Flags(0, False, 1),  # what `onnxforge serve` does by default
        Flags(0, False, 1, POOL_THREADS),
        Flags(1, None, 1),
        Flags(cores, False, 1),
        Flags(1, None, cores),
        Flags(cores, True, 1),
        Flags(0, True, 1),
    ]
    rest = [
        Flags(t, s, w) for w in workers for t in (max(1, cores // w), cores) for s in (False, True)
    ]
    seen: set[tuple[int, bool | None, int, int]] = set()
    grid = []
    for flags in first + rest:
        # Several workers left to ONNX Runtime share the cores out (`serve --workers`).
        threads_each = flags.threads or (max(1, cores // flags.workers) if flags.workers > 1 else 0)
        spinning = None if threads_each == 1 else flags.spinning
        key = (threads_each, spinning, flags.workers, flags.grpc_threads)
        if flags.workers <= cores and key not in seen:
            seen.add(key)
            grid.append(replace(flags, spinning=None) if spinning is None else flags)
    return grid


def batch_sizes(original: Batching, rows: int, concurrencies: Sequence[int]) -> list[int]:
    """No batching, the model's own, 8 requests' rows and every client's rows in one batch."""
    sizes = [0, original.max_batch_size, 8 * rows, max(concurrencies) * rows]
    return sorted({size for size in sizes if size == 0 or size >= rows})


DELAYS_US = (0, 100, 500, 2000)


# ------------------------------------------------------------------------------ measuring


def serve_command(repository: Path, flags: Flags) -> str:
    """The ``onnxforge serve`` command line with ``flags``."""
    return " ".join(["onnxforge", "serve", str(repository), *flags.args()])
