"""Dynamic batching: concurrent requests for one model merged into one ``session.run``.

One ``Batcher`` per model owns a queue, a background task and one future per request.
A request that finds the queue empty and an instance free runs at once, started straight
from :meth:`Batcher.submit` (no queue, no task hop: a lone request never waits). Otherwise
it is queued; the task, once an instance is free, takes the oldest request, and gathers
queued requests up to ``max_batch_size`` rows, waiting at most ``max_queue_delay_us`` after
the oldest request arrived for the batch to fill (not at all when nothing else is queued).
Inputs are stacked on axis 0, the union of requested outputs is computed once, and every
request gets back exactly its own rows of exactly the outputs it asked for. An exception
reaches every request of the batch. Cancelled requests are dropped before they are run;
requests past their deadline are answered DEADLINE_EXCEEDED without running.

A run (a lone request or a batch) goes to an instance's thread, except for a model measured
to be quick: once INLINE_AFTER runs in a row each took at most ``inline_us`` (0: never), a
run of no more rows than those runs on the event loop's own thread, sparing the hop to a
thread and back (most of a small model's cost). One run over ``inline_us`` sends the model
back to its thread until it has proved quick again: a model that turns slow holds up the
loop (and other models) for at most that one run.
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

INLINE_AFTER = 16  # quick lone runs in a row before a lone request runs on the loop
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


@dataclass
class _Filling:
    """A batch being gathered: woken once ``need`` more rows have been queued, or when due."""

    need: int
    waiter: asyncio.Future[None]
    rows: int = 0  # queued since the wait began


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
        inline_us: int = 0,
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
        self._arrived = asyncio.Event()  # a request was queued, or an instance freed
        self._filling: list[_Filling] = []  # batches being gathered, waiting for rows
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._in_flight = 0  # batches being computed right now (lone requests included)
        self._inline_ns = inline_us * 1000
        self._quick_runs = 0  # runs in a row that took at most inline_us
        self._quick_rows = 0  # the most rows of those

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
        loop = asyncio.get_running_loop()
        if not self._queue and self._in_flight < self._instances:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(self.name)
            if self._inline(rows):
                return self._run_inline(inputs, outputs, rows)
            future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
            self._in_flight += 1  # released by _lone_done, on the loop, when the run ends
            self._start_lone(loop, inputs, outputs, rows, future)
        else:
            future = loop.create_future()
            self._queue.append(_Request(inputs, outputs, rows, future, deadline=deadline))
            self._arrived.set()
            for filling in self._filling:  # a batch being gathered: full yet?
                filling.rows += rows
                if filling.rows >= filling.need:
                    _wake(filling.waiter)
            self.start()
        return await future

    def _run_inline(
        self, inputs: Arrays, outputs: Sequence[str], rows: int
    ) -> dict[str, np.ndarray]:
        """One run on the event loop's thread (for a model measured to be quick)."""
        started = time.monotonic_ns()
        try:
            every = self._run(inputs, list(outputs))
        except Exception:
            self._quick_runs = self._quick_rows = 0
            raise
        elapsed = time.monotonic_ns() - started
        self._note(rows, elapsed)
        if self._on_batch is not None:
            self._on_batch(BatchStats(1, rows, [0], elapsed))
        return {name: every[name] for name in outputs}

    def _inline(self, rows: int) -> bool:
        """Whether a run of ``rows`` goes on the loop's thread (the model proved quick)."""
        return self._quick_runs >= INLINE_AFTER and rows <= self._quick_rows

    def _note(self, rows: int, elapsed_ns: int) -> None:
        """Count a quick run, or start counting again after a slow one."""
        if elapsed_ns <= self._inline_ns:
            self._quick_runs += 1
            self._quick_rows = max(self._quick_rows, rows)
        else:
            self._quick_runs = self._quick_rows = 0

    def _start_lone(
        self,
        loop: asyncio.AbstractEventLoop,
        inputs: Arrays,
        outputs: Sequence[str],
        rows: int,
        future: asyncio.Future[dict[str, np.ndarray]],
    ) -> None:
        """Run one request on an instance's thread; its future is set back on the loop."""
        run, report = self._run, self._on_batch

        def work() -> None:
            started = time.monotonic_ns()
            try:
                every = run(inputs, list(outputs))
                results = {name: every[name] for name in outputs}
            except Exception as error:  # the caller must hear of it
                loop.call_soon_threadsafe(self._lone_done, future, None, error, rows, -1)
                return
            elapsed = time.monotonic_ns() - started
            # Reported from the thread: a run whose caller left still counts.
            if report is not None:
                report(BatchStats(1, rows, [0], elapsed))
            loop.call_soon_threadsafe(self._lone_done, future, results, None, rows, elapsed)

        try:
            if self._executor is None:
                loop.run_in_executor(None, work)
            else:
                self._executor.submit(work)
        except BaseException:
            self._in_flight -= 1
            raise

    def _lone_done(
        self,
        future: asyncio.Future[dict[str, np.ndarray]],
        results: dict[str, np.ndarray] | None,
        error: Exception | None,
        rows: int,
        elapsed_ns: int,  # -1: the run failed
    ) -> None:
        self._in_flight -= 1
        if self._inline_ns > 0:
            self._note(rows, elapsed_ns if elapsed_ns >= 0 else self._inline_ns + 1)
        if self._queue:
            self._arrived.set()  # an instance is free for what queued meanwhile
        if future.done():
            return  # the caller left
        if error is not None:
            future.set_exception(error)
        else:
            assert results is not None
            future.set_result(results)

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
                if self._queue:
                    self._arrived.set()  # another task may wait for a free instance

    async def _next_batch(self) -> list[_Request]:
        # A live request, and an instance free for it (a lone request may hold one).
        while not (self._live_head() and self._in_flight < self._instances):
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
            # Until due, or until enough rows came to fill the batch: not woken per arrival.
            loop = asyncio.get_running_loop()
            filling = _Filling(self.max_batch_size - rows, loop.create_future())
            self._filling.append(filling)
            timer = loop.call_later(remaining, _wake, filling.waiter)
            try:
                await filling.waiter
            finally:
                timer.cancel()
                self._filling.remove(filling)
        return batch

    def _timed(self, inputs: Arrays, outputs: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
        """One run and how long it took (ns), measured where it ran."""
        started = time.monotonic_ns()
        results = self._run(inputs, outputs)
        return results, time.monotonic_ns() - started

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
        rows = sum(request.rows for request in batch)
        started = time.monotonic_ns()
        try:
            if self._inline(rows):
                results, elapsed = self._timed(stacked, wanted)
            else:
                loop = asyncio.get_running_loop()
                ran = loop.run_in_executor(self._executor, self._timed, stacked, wanted)
                results, elapsed = await ran
        except Exception as error:  # every waiting request must hear of it
            self._quick_runs = self._quick_rows = 0
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        finished = time.monotonic_ns()
        if self._inline_ns > 0:
            self._note(rows, elapsed)
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
