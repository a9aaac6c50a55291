"""Dynamic batching: concurrent requests for one model merged into one ``session.run``.

One ``Batcher`` per model owns a queue, a background task and one future per request.
The task takes the oldest request; if nothing else is queued it runs it at once (a lone
request never waits). Otherwise it gathers queued requests up to ``max_batch_size`` rows,
waiting at most ``max_queue_delay_us`` after the oldest request arrived for the batch to
fill. Inputs are stacked on axis 0, the union of requested outputs is computed once, and
every request gets back exactly its own rows of exactly the outputs it asked for. An
exception reaches every request of the batch. Cancelled requests are dropped before they
are run; requests past their deadline are answered DEADLINE_EXCEEDED without running.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from onnxforge.server.errors import DeadlineExceeded, ModelShuttingDown, QueueFull

Arrays = Mapping[str, np.ndarray]
RunBatch = Callable[[Arrays, Sequence[str]], dict[str, np.ndarray]]


@dataclass
class BatchStats:
    """What the batcher measured for one executed batch."""

    requests: int
    rows: int
    queue_ns: list[int]  # per request: arrival to start of compute
    compute_ns: int


@dataclass
class _Request:
    inputs: Arrays
    outputs: Sequence[str]
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    arrived: int = field(default_factory=time.monotonic_ns)
    deadline: float | None = None  # time.monotonic() seconds


class Batcher:
    """Queue, background task and futures for one model; see the module docstring."""

    def __init__(
        self,
        name: str,
        run: RunBatch,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue: int = 1024,
        executor: Executor | None = None,
        instances: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay = max_queue_delay_us / 1e6
        self.max_queue = max_queue
        self._executor = executor
        self._instances = max(1, instances)
        self._on_batch = on_batch
        self._queue: collections.deque[_Request] = collections.deque()
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._in_flight = 0  # batches being computed right now

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"batcher-{self.name}-{i}")
                for i in range(self._instances)
            ]

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(
        self, inputs: Arrays, outputs: Sequence[str], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue one request (rows on axis 0 of every input) and wait for its outputs."""
        if self._closing:
            raise ModelShuttingDown(self.name)
        if len(self._queue) >= self.max_queue:
            raise QueueFull(self.name, self.max_queue)
        rows = len(next(iter(inputs.values())))
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(inputs, outputs, rows, future, deadline=deadline))
        self._arrived.set()
        self.start()
        return await future

    async def close(self) -> None:
        """Finish everything queued, then stop the background tasks."""
        self._closing = True
        while self._queue or self._in_flight:
            await asyncio.sleep(0.001)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()  # counts itself in flight
            try:
                await self._execute(batch)
            finally:
                self._in_flight -= 1

    async def _next_batch(self) -> list[_Request]:
        while not self._live_head():
            self._arrived.clear()
            await self._arrived.wait()
        first = self._queue.popleft()
        self._in_flight += 1  # from here on close() must wait for this batch
        batch, rows = [first], first.rows
        if not self._live_head():
            return batch  # nothing else is waiting: never hold a lone request back
        due = first.arrived / 1e9 + self.max_delay
        while rows < self.max_batch_size:
            if self._live_head():
                if rows + self._queue[0].rows > self.max_batch_size:
                    break
                request = self._queue.popleft()
                batch.append(request)
                rows += request.rows
                continue
            remaining = due - time.monotonic_ns() / 1e9
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return batch

    def _live_head(self) -> bool:
        """Drop cancelled and expired requests at the head; is a live one left?"""
        now = time.monotonic()
        while self._queue:
            head = self._queue[0]
            if head.future.done():
                self._queue.popleft()  # cancelled by its caller
            elif head.deadline is not None and now >= head.deadline:
                self._queue.popleft()
                head.future.set_exception(DeadlineExceeded(self.name))
            else:
                return True
        return False

    async def _execute(self, batch: list[_Request]) -> None:
        batch = [request for request in batch if not request.future.done()]
        if not batch:
            return
        wanted = list(dict.fromkeys(name for request in batch for name in request.outputs))
        names = list(batch[0].inputs)
        if len(batch) == 1:
            stacked = dict(batch[0].inputs)
        else:
            stacked = {name: np.concatenate([r.inputs[name] for r in batch]) for name in names}
        started = time.monotonic_ns()
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, self._run, stacked, wanted)
        except Exception as error:  # every waiting request must hear of it
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        finished = time.monotonic_ns()
        offset = 0
        for request in batch:
            end = offset + request.rows
            if not request.future.done():
                request.future.set_result(
                    {name: results[name][offset:end] for name in request.outputs}
                )
            offset = end
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    len(batch), offset, [started - r.arrived for r in batch], finished - started
                )
            )
