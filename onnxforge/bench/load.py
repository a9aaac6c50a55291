"""A closed-loop load driver: N concurrent clients, for a duration or a number of requests.

Each of ``concurrency`` coroutines sends a request, waits for its answer and sends the next
(closed loop), through a ``send(worker, index)`` coroutine the caller provides: ``worker``
says which client sends (0..N-1, e.g. to give each its own channel), ``index`` counts the
requests issued so far (to cycle through a pool of inputs). An error that carries a status
(a gRPC ``RpcError``, or an exception whose ``code`` is the status name, as the client's
errors are) counts under that name; every other exception propagates.

Two ways to bound a run (:class:`Load`):

- ``duration``: requests are measured when they complete inside the window that starts
  ``warmup`` s after ``start_at`` and lasts ``duration`` s; throughput is over the window;
- ``requests``: that many requests are sent (at most ``max_seconds`` long), every one measured;
  throughput is over the time to the last answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

Send = Callable[[int, int], Awaitable[object]]
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Load:
    """How many clients, and how long or how many requests."""

    concurrency: int
    duration: float | None = None  # measured seconds (with warmup before them)
    requests: int | None = None  # or: this many requests in all, every one measured
    warmup: float = 0.0  # unmeasured seconds before the window (duration runs)
    start_at: float | None = None  # time.monotonic() to start at (None: now)
    max_seconds: float = 600.0  # requests runs stop sending after this long
    error_pause: float = 0.0  # a client that got an error waits this long before the next

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if (self.duration is None) == (self.requests is None):
            raise ValueError("give a duration or a number of requests, not both")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"duration must be positive, got {self.duration}")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")


@dataclass
class Outcome:
    """What one run measured. ``latencies`` are seconds, of the measured answers only."""

    latencies: np.ndarray
    statuses: Counter[str]  # measured: "OK" and each error's status code name
    seconds: float  # the measured stretch
    sent: int  # requests issued (warm-up included)
    cpu_seconds: float  # this process's CPU time over the measured stretch
    first_error: str | None = None  # "CODE: details" of the first measured error
    stopped_by_time_limit: bool = False  # a requests run that hit max_seconds
    rows_per_request: int = 1

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != "OK")

    @property
    def requests_per_second(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.requests_per_second * self.rows_per_request

    def percentiles_ms(self, qs: Sequence[float] = PERCENTILES) -> list[float]:
        return percentiles_ms(self.latencies, qs)


def percentiles_ms(latencies: np.ndarray, qs: Sequence[float] = PERCENTILES) -> list[float]:
    """Percentiles of latencies in seconds, in milliseconds (NaN when there are none)."""
    if len(latencies) == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(latencies) * 1e3, list(qs))]


@dataclass
class _Run:
    load: Load
    measure_from: float
    until: float  # no request is sent from then on
    window_end: float  # answers from then on are not measured
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None
    issued: int = 0

    def measured(self, moment: float) -> bool:
        return self.measure_from <= moment < self.window_end

    def more(self, now: float) -> bool:
        if self.load.requests is not None:
            return self.issued < self.load.requests and now < self.until
        return now < self.until


async def drive(send: Send, load: Load, rows_per_request: int = 1) -> Outcome:
    """Run ``load`` through ``send``; what it measured."""
    loop = asyncio.get_running_loop()
    start = time.monotonic() if load.start_at is None else load.start_at
    if load.duration is not None:
        until = start + load.warmup + load.duration
        run = _Run(load, start + load.warmup, until, until)
    else:
        run = _Run(load, start, start + load.max_seconds, float("inf"))
    cpu: dict[str, float] = {}
    loop.call_at(_loop_time(loop, run.measure_from), _mark, cpu, "from")
    if load.duration is not None:
        loop.call_at(_loop_time(loop, run.until), _mark, cpu, "until")
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    await asyncio.gather(*(_client(send, worker, run) for worker in range(load.concurrency)))
    ended = time.monotonic()
    cpu.setdefault("until", time.process_time())
    seconds = load.duration if load.duration is not None else ended - start
    return Outcome(
        latencies=np.asarray(run.latencies, dtype=np.float64),
        statuses=run.statuses,
        seconds=seconds,
        sent=run.issued,
        cpu_seconds=cpu["until"] - cpu.get("from", cpu["until"]),
        first_error=run.first_error,
        stopped_by_time_limit=load.requests is not None and run.issued < load.requests,
        rows_per_request=rows_per_request,
    )


def status_of(error: BaseException) -> tuple[str, str] | None:
    """(status name, details) of an error that carries a status; None for any other."""
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        return str(error.code().name), str(error.details())
    code = getattr(error, "code", None)
    if isinstance(code, str):
        return code, str(getattr(error, "message", error))
    return None


def _loop_time(loop: asyncio.AbstractEventLoop, moment: float) -> float:
    """``time.monotonic()`` moment on the loop's own clock."""
    return loop.time() + (moment - time.monotonic())


def _mark(cpu: dict[str, float], key: str) -> None:
    cpu[key] = time.process_time()


async def _client(send: Send, worker: int, run: _Run) -> None:
    while run.more(time.monotonic()):
        index = run.issued
        run.issued += 1
        began = time.monotonic()
        try:
            await send(worker, index)
        except Exception as error:
            found = status_of(error)
            if found is None:
                raise
            if run.measured(time.monotonic()):
                status, details = found
                run.statuses[status] += 1
                run.first_error = run.first_error or f"{status}: {details}"
            if run.load.error_pause > 0:
                await asyncio.sleep(run.load.error_pause)
            continue
        ended = time.monotonic()
        if run.measured(ended):
            run.latencies.append(ended - began)
            run.statuses["OK"] += 1
