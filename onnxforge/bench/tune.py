"""What ``onnxforge tune`` measures: serving settings of one model under real closed-loop load.

The search is coarse to fine, within a time budget:

1. server flags (``onnxforge serve --threads/--spinning/--workers/--grpc-threads``), with the
   model's own batching settings: one :class:`~onnxforge.bench.process.ServerProcess` per
   point, on a temporary repository holding only that model (its newest version);
2. batching settings (``max_batch_size``, ``max_queue_delay_us``, ``instances``) on the best
   server flags: one server, each point a ``RepositoryModelLoad`` with a ``config``
   override, one setting at a time (batch size, then queue delay, then instances).

Every point runs each concurrency level for ``seconds`` after an unmeasured warm-up, through
the harness's driver (:func:`~onnxforge.bench.load.drive`); the server's CPU is read from
``/proc`` for its whole process group (workers included) around the measured stretch.

The objective (:func:`choose`): among the points with every request answered OK, those whose
p99 at the lowest concurrency is at most twice the best p99 any point reached there; of
these, the highest rows/s at the highest concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnxforge.bench.levels import model_inputs
from onnxforge.bench.load import Load, drive
from onnxforge.bench.machine import process_cpu_seconds, wait_quiet
from onnxforge.bench.process import ServerProcess
from onnxforge.bench.tune_points import (
    CONNECTIONS,
    DELAYS_US,
    FLAGS_SHARE,
    START_GUESS,
    Batching,
    Flags,
    Measured,
    Plan,
    Point,
    Result,
    TuneError,
    batch_sizes,
    choose,
    flag_grid,
)
from onnxforge.builder.layout import CONFIG_FILE, PLATFORM, versions
from onnxforge.builder.triton import ModelConfig, read_config
from onnxforge.client import AsyncInferenceClient

# ------------------------------------------------------------------------------ measuring


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid`` (a server and workers)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid:
            total += process_cpu_seconds(int(entry.name))
    return total


async def measure_levels(url: str, model: str, plan: Plan, pgid: int) -> list[Measured]:
    """Each concurrency level of ``plan`` against the server at ``url`` (process group
    ``pgid``): an unmeasured warm-up, then ``plan.seconds`` measured."""
    measured = []
    for concurrency in plan.concurrencies:
        count = min(concurrency, CONNECTIONS)
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(AsyncInferenceClient(url)) for _ in range(count)
            ]
            measured.append(await _level(clients, model, concurrency, plan, pgid))
    return measured


async def _level(
    clients: list[AsyncInferenceClient], model: str, concurrency: int, plan: Plan, pgid: int
) -> Measured:
    inputs = await model_inputs(clients[0], model, plan.rows)
    # A request stuck in the server counts as DEADLINE_EXCEEDED instead of holding the run.
    timeout = max(10.0, 5 * plan.seconds)

    async def send(worker: int, index: int) -> object:
        return await clients[worker % len(clients)].infer(model, inputs, timeout=timeout)

    await drive(send, Load(concurrency, duration=plan.warmup), plan.rows)
    cpu = group_cpu_seconds(pgid)
    outcome = await drive(send, Load(concurrency, duration=plan.seconds), plan.rows)
    server_cpu = group_cpu_seconds(pgid) - cpu
    p50, p99 = outcome.percentiles_ms((50, 99))
    answered = max(1, outcome.answered)
    return Measured(
        concurrency,
        outcome.answered,
        dict(outcome.statuses),
        outcome.seconds,
        outcome.requests_per_second,
        outcome.rows_per_second,
        p50,
        p99,
        1e3 * server_cpu / answered,
        1e3 * outcome.cpu_seconds / answered,
        outcome.first_error,
    )


@contextlib.contextmanager
def single_model_repository(repository: Path, model: str) -> Iterator[tuple[Path, Batching]]:
    """A temporary repository holding only the newest version of ``model`` (files linked,
    or copied across file systems), and the model's own batching settings."""
    folder = repository / model
    found = versions(folder)
    if not found:
        hint = " (build it first: onnxforge build)" if folder.is_dir() else ""
        raise TuneError(f"no built model '{model}' in {repository}{hint}")
    config: ModelConfig = read_config(folder / CONFIG_FILE)
    original = Batching(config.max_batch_size, config.max_queue_delay_us, config.instances)
    with tempfile.TemporaryDirectory(prefix="onnxforge-tune-") as temporary:
        copy = Path(temporary) / model
        source = folder / str(found[-1])
        for path in source.rglob("*"):
            target = copy / "1" / path.relative_to(source)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        (copy / CONFIG_FILE).write_text(
            f'name: "{model}"\nplatform: "{PLATFORM}"\n{original.pbtxt()}'
            "version_policy: { latest: { num_versions: 1 } }\n"
        )
        yield Path(temporary), original


async def _load(url: str, model: str, batching: Batching) -> float:
    began = time.monotonic()
    async with AsyncInferenceClient(url) as client:
        await client.load(model, config=batching.config(), timeout=120)
    return time.monotonic() - began


async def _batchable(url: str, model: str) -> bool:
    async with AsyncInferenceClient(url) as client:
        meta = await client.metadata(model)
    tensors = [*meta.inputs, *meta.outputs]
    return all(tensor.shape and tensor.shape[0] == -1 for tensor in tensors)


# ------------------------------------------------------------------------------ the search


@dataclass
class _Search:
    """The points so far and the time they may take."""

    plan: Plan
    report: Callable[[Point], None]
    began: float = field(default_factory=time.monotonic)
    points: list[Point] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # server starts seen, seconds

    @property
    def start_seconds(self) -> float:
        return max(self.starts, default=START_GUESS)

    def room(self, setup: float, share: float = 1.0, most: int | None = None) -> bool:
        """Whether a point with ``setup`` seconds fits in ``share`` of the budget."""
        limit = self.plan.max_points if most is None else most
        if limit is not None and len(self.points) >= limit:
            return False
        until = self.began + self.plan.budget * share
        return time.monotonic() + self.plan.point_seconds(setup) <= until

    def server(self, repository: Path, flags: Flags) -> ServerProcess:
        started = time.monotonic()
        server = ServerProcess(repository, *flags.args(), "--no-build")
        self.starts.append(time.monotonic() - started)
        return server

    def measure(self, server: ServerProcess, point: Point, model: str) -> None:
        point.levels = asyncio.run(measure_levels(server.url, model, self.plan, server.pid))
        self.points.append(point)
        self.report(point)


def tune(
    repository: Path,
    model: str,
    plan: Plan,
    report: Callable[[Point], None] = lambda point: None,
) -> Result:
    """Measure the grid within ``plan.budget`` seconds; ``report`` hears of every point."""
    _, busy = wait_quiet(0.0, 0.0, sample=0.25)  # one sample: how busy the machine is
    search = _Search(plan, report)
    with single_model_repository(repository, model) as (temporary, original):
        batchable = True
        share = FLAGS_SHARE
        most = (
            None if plan.max_points is None else max(1, plan.max_points - plan.max_points * 2 // 5)
        )
        for flags in flag_grid(plan.cores):
            if search.points and not search.room(search.start_seconds, share, most):
                break
            with search.server(temporary, flags) as server:
                if not search.points:
                    batchable = asyncio.run(_batchable(server.url, model))
                    if not batchable and plan.cores == 1:
                        share, most = 1.0, plan.max_points  # nothing to tune but flags
                point = Point(len(search.points), "flags", flags, original, search.starts[-1])
                search.measure(server, point, model)
        best, _ = choose(search.points, plan.concurrencies)
        if search.room(search.start_seconds + 1.0):
            _batching_stage(search, temporary, model, best, batchable)
    chosen, limit = choose(search.points, plan.concurrencies)
    elapsed = time.monotonic() - search.began
    return Result(model, plan, original, search.points, chosen, limit, elapsed, batchable, busy)


def _batching_stage(
    search: _Search, temporary: Path, model: str, best: Point, batchable: bool
) -> None:
    """Batch size, then queue delay, then instances, each step from the best so far."""
    plan = search.plan
    tried = {point.batching for point in search.points if point.flags == best.flags}
    loads: list[float] = []

    def sizes(base: Batching) -> list[Batching]:
        if not batchable:
            return []
        return [
            Batching(size, (base.max_queue_delay_us or 500) if size else 0, base.instances)
            for size in batch_sizes(base, plan.rows, plan.concurrencies)
        ]

    def delays(base: Batching) -> list[Batching]:
        if base.max_batch_size == 0:
            return []
        return [replace(base, max_queue_delay_us=delay) for delay in DELAYS_US]

    def instances(base: Batching) -> list[Batching]:
        return [replace(base, instances=count) for count in sorted({1, plan.cores})]

    with search.server(temporary, best.flags) as server:
        current = best
        for step in (sizes, delays, instances):
            for batching in step(current.batching):
                if batching in tried:
                    continue
                if not search.room(max(loads, default=1.0)):
                    return
                tried.add(batching)
                loads.append(asyncio.run(_load(server.url, model, batching)))
                point = Point(len(search.points), "batching", best.flags, batching, loads[-1])
                search.measure(server, point, model)
            same = [point for point in search.points if point.flags == best.flags]
            current, _ = choose(same, plan.concurrencies)
