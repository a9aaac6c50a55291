"""Dynamic batching: concurrent requests for one model merged into one ``session.run``.

One ``Batcher`` per model version owns a queue and counts the runs in flight (at most
``instances`` at a time). It is thread-safe and has two doors: :meth:`Batcher.run` for a
caller on a thread of its own (the thread-pool gRPC transport) and :meth:`Batcher.submit`
for a caller on the event loop (HTTP, streams, the asyncio gRPC transport).

**Leader/follower.** A request that finds the queue empty and an instance free runs at
once, on its caller's thread: no queue, no hop to another thread (a lone request never
waits). Otherwise it is queued and its caller waits. When a run ends, the instance is
handed on to the oldest live queued request, whose caller becomes the leader: it takes
that request and gathers queued requests up to ``max_batch_size`` rows, waiting at most
``max_queue_delay_us`` after the oldest request arrived for the batch to fill (not at all
when nothing else is queued), runs them as one batch and answers every request of it,
then hands the instance on in turn. An event-loop caller never blocks the loop: when it
is made leader, its batch runs on one of the model's own threads (``executor``).

Inputs are stacked on axis 0, the union of requested outputs is computed once, and every
request gets back exactly its own rows of exactly the outputs it asked for. An exception
reaches every request of the batch. Cancelled requests are dropped before they are run;
requests past their deadline are answered DEADLINE_EXCEEDED without running.

A model measured to be quick is not worth batching: a lone event-loop request to it runs on
the loop's own thread, sparing the hop to a thread and back, and a blocking caller's request
runs at once on its own thread, beside any other run (waking and being woken would cost more
than the run). Quick means: its one-row run timed within ``inline_us`` when it was loaded
(``quick``), or INLINE_AFTER runs in a row each took at most ``inline_us`` of their thread's
CPU time (wall time would not do: under load a quick run also waits for the GIL) and at most
WALL_SLACK times that of wall time; 0: never.
One run over ``inline_us`` sends the model back to its threads and its batches until it has
proved quick again: a model that turns slow holds up the loop for that one run.

A caller on a :class:`~onnxforge.server.pacing.PacedExecutor` thread gives up its place there
while it waits for a batch, and while a slow model runs (ONNX Runtime lets go of the GIL).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from onnxforge.server import affinity
from onnxforge.server.errors import DeadlineExceeded, ModelShuttingDown, QueueFull
from onnxforge.server.pacing import waiting

INLINE_AFTER = 16  # quick lone runs in a row before a lone request runs on the loop
# A quick run's wall time may exceed its CPU time (waiting for the GIL under load), but
# not by more than this factor.
WALL_SLACK = 20
Arrays = Mapping[str, np.ndarray]
Results = dict[str, np.ndarray]
RunBatch = Callable[[Arrays, Sequence[str]], Results]


class RequestCancelled(Exception):
    """The caller of a blocking :meth:`Batcher.run` went away before it was answered."""


@dataclass
class BatchStats:
    """What the batcher measured for one executed batch."""

    requests: int
    rows: int
    queue_ns: list[int]  # per request: arrival to start of compute
    compute_ns: int


class _Request:
    """One request: what it asks, and how its caller hears of the answer."""

    __slots__ = (
        "arrived",
        "cancelled",
        "deadline",
        "error",
        "event",
        "finished",
        "future",
        "inputs",
        "lead",
        "loop",
        "loop_thread",
        "outputs",
        "results",
        "rows",
    )

    def __init__(
        self,
        inputs: Arrays,
        outputs: Sequence[str],
        rows: int,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.inputs, self.outputs, self.rows, self.deadline = inputs, outputs, rows, deadline
        self.arrived = time.monotonic_ns()
        self.results: Results | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.cancelled = False  # the caller left: not to be run
        self.lead = False  # handed an instance: its caller runs the next batch
        self.loop = loop  # an event-loop caller's loop; None: a caller on its own thread
        self.loop_thread = threading.get_ident() if loop is not None else 0  # the loop's
        self.event: threading.Event | None = None  # made when a blocking caller must wait
        self.future: asyncio.Future[None] | None = None if loop is None else loop.create_future()

    def finish(self, results: Results | None = None, error: BaseException | None = None) -> None:
        """Answer the request and wake its caller (from any thread)."""
        self.results, self.error, self.finished = results, error, True
        self.wake()

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            if threading.get_ident() == self.loop_thread:  # run on the loop: no wake-up
                _settle(self.future)
                return
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(_settle, self.future)

    def outcome(self) -> Results:
        if self.error is not None:
            raise self.error
        assert self.results is not None
        return self.results


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Filling:
    """A batch being gathered: its leader is woken once ``need`` more rows are queued."""

    __slots__ = ("need", "rows")

    def __init__(self, need: int) -> None:
        self.need, self.rows = need, 0


class Batcher:
    """Queue and instances of one model version; see the module docstring."""

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
        quick: bool = False,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_ns = max_queue_delay_us * 1000
        self.max_queue = max_queue
        self._instances = max(1, instances)
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            self._instances, thread_name_prefix=f"batcher-{name}", initializer=affinity.unpin
        )
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._filled = threading.Condition(self._lock)  # leaders gathering a batch wait here
        self._queue: collections.deque[_Request] = collections.deque()
        self._fillings: list[_Filling] = []
        self._closing = False
        self._in_flight = 0  # instances running a batch right now (lone requests included)
        self._direct = 0  # a quick model's runs on their callers' threads (run_blocking)
        self._inline_ns = inline_us * 1000
        # Runs in a row that took at most inline_us, and the most rows of those. A model
        # timed quick at load (``quick``) starts proven for one row.
        self._quick_runs = INLINE_AFTER if quick and inline_us > 0 else 0
        self._quick_rows = 1 if self._quick_runs else 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ the two doors

    def run_blocking(
        self,
        inputs: Arrays,
        outputs: Sequence[str],
        deadline: float | None = None,
        on_cancel: Callable[[Callable[[], None]], object] | None = None,
    ) -> Results:
        """Run one request on the calling thread's time: lead a batch, or wait for one.

        ``on_cancel(callback)`` registers ``callback`` to be called (from any thread) when
        the caller goes away; the call then raises :class:`RequestCancelled`.
        """
        rows = _rows(inputs)
        if self._inline(rows):
            return self._run_direct(inputs, outputs, rows, deadline)
        request = _Request(inputs, outputs, rows, deadline)
        if self._admit(request):
            try:  # a lone request: run it, nothing to gather or hand back
                return self._run_lone(inputs, outputs, request.rows)
            finally:
                self._hand_on()
        event = request.event
        assert event is not None
        if on_cancel is not None:
            on_cancel(lambda: self._cancel(request))
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if timeout is not None:
                timeout = min(timeout, threading.TIMEOUT_MAX)
            with waiting():
                woken = event.wait(timeout)
            if request.lead:  # an instance was handed to this request: run the next batch
                self._lead(request)
                break
            if request.finished:
                break
            if request.cancelled or not woken:
                with self._lock:
                    queued = request in self._queue
                    if queued:
                        self._queue.remove(request)
                if queued:
                    if request.cancelled:
                        raise RequestCancelled(self.name)
                    raise DeadlineExceeded(self.name)
                event.clear()  # already taken into a batch or handed on: wait for that
                if not request.lead and not request.finished:
                    with waiting():
                        event.wait()
                continue
        if request.cancelled and not request.finished:
            raise RequestCancelled(self.name)
        return request.outcome()

    async def submit(
        self, inputs: Arrays, outputs: Sequence[str], deadline: float | None = None
    ) -> Results:
        """Queue one request (rows on axis 0 of every input) and wait for its outputs."""
        rows = _rows(inputs)
        if self._inline(rows) and self._take_lone(deadline):
            try:  # quick and lone: on the loop's thread now, nothing to queue or wake
                return self._run_lone(inputs, outputs, rows)
            finally:
                self._hand_on()
        request = _Request(inputs, outputs, rows, deadline, asyncio.get_running_loop())
        future = request.future
        assert future is not None
        if self._admit(request):
            if self._inline(request.rows):
                self._lead(request)  # quick: on the loop's thread, no hop
                return request.outcome()
            self._executor.submit(self._lead, request)
        try:
            await future
        except asyncio.CancelledError:
            request.cancelled = True  # dropped unrun if still queued
            raise
        return request.outcome()

    def _take_lone(self, deadline: float | None) -> bool:
        """Take an instance for a request that need not be queued: True when nothing is
        queued and an instance is free (else the caller queues it through ``_admit``)."""
        with self._lock:
            return self._lone(deadline)

    def _lone(self, deadline: float | None) -> bool:  # locked
        if self._closing:
            raise ModelShuttingDown(self.name)
        if self._queue or self._in_flight >= self._instances:
            return False
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(self.name)
        self._in_flight += 1
        return True

    def _admit(self, request: _Request) -> bool:
        """Take an instance for ``request`` (True) or queue it (False); or refuse it."""
        with self._lock:
            if self._lone(request.deadline):
                return True
            if len(self._queue) >= self.max_queue:
                raise QueueFull(self.name, self.max_queue)
            if request.loop is None:
                request.event = threading.Event()
            self._queue.append(request)
            for filling in self._fillings:  # a batch being gathered: full yet?
                filling.rows += request.rows
                if filling.rows >= filling.need:
                    self._filled.notify_all()
            return False

    def _cancel(self, request: _Request) -> None:
        request.cancelled = True
        request.wake()

    # ------------------------------------------------------------------ leading

    def _lead(self, first: _Request) -> None:
        """Gather a batch behind ``first``, run it, answer it, hand the instance on."""
        try:
            batch = self._gather(first)
            self._execute(batch)
        finally:
            self._hand_on()

    def _run_direct(
        self, inputs: Arrays, outputs: Sequence[str], rows: int, deadline: float | None
    ) -> Results:
        """A quick model's request on its caller's thread, now, beside any other run.

        Waiting to be batched costs a thread more than such a run: being woken, and waking
        the others, takes longer than the run itself (``session.run`` may be called from
        several threads at once).
        """
        with self._lock:
            if self._closing:
                raise ModelShuttingDown(self.name)
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(self.name)
            self._direct += 1
        try:
            return self._run_lone(inputs, outputs, rows)
        finally:
            with self._lock:
                self._direct -= 1

    def _run_lone(self, inputs: Arrays, outputs: Sequence[str], rows: int) -> Results:
        results, elapsed = self._timed_run(inputs, outputs, rows)
        if self._on_batch is not None:
            self._on_batch(BatchStats(1, rows, [0], elapsed))
        return {name: results[name] for name in outputs}

    def _hand_on(self) -> None:
        """Release this run's instance, or pass it to the oldest live queued request."""
        with self._lock:
            if self._live_head():
                request = self._queue.popleft()
                request.lead = True
            else:
                self._in_flight -= 1
                return
        if request.loop is None:
            request.wake()  # its own thread leads
        else:
            try:
                self._executor.submit(self._lead, request)
            except RuntimeError:  # the executor is shut down: never leave it waiting
                request.finish(error=ModelShuttingDown(self.name))
                with self._lock:
                    self._in_flight -= 1

    def _gather(self, first: _Request) -> list[_Request]:
        batch, rows = [first], first.rows
        with self._lock:
            if not self._live_head():
                return batch  # nothing else is waiting: never hold a lone request back
            due = first.arrived + self.max_delay_ns
            while rows < self.max_batch_size:
                if self._live_head():
                    if rows + self._queue[0].rows > self.max_batch_size:
                        break
                    request = self._queue.popleft()
                    batch.append(request)
                    rows += request.rows
                    continue
                remaining = (due - time.monotonic_ns()) / 1e9
                if remaining <= 0:
                    break
                # Until due, or until enough rows came to fill the batch: not woken per arrival.
                filling = _Filling(self.max_batch_size - rows)
                self._fillings.append(filling)
                try:
                    with waiting():
                        self._filled.wait(remaining)
                finally:
                    self._fillings.remove(filling)
        return batch

    def _live_head(self) -> bool:
        """Drop cancelled and expired requests at the head; is a live one left? (locked)"""
        now = time.monotonic()
        queue = self._queue
        while queue:
            head = queue[0]
            if head.cancelled or (head.future is not None and head.future.done()):
                queue.popleft()
            elif head.deadline is not None and now >= head.deadline:
                queue.popleft()
                head.finish(error=DeadlineExceeded(self.name))
            else:
                return True
        return False

    def _execute(self, batch: list[_Request]) -> None:
        batch = [request for request in batch if not request.cancelled]
        if not batch:
            return
        if len(batch) == 1:
            wanted = list(batch[0].outputs)
            stacked = batch[0].inputs
        else:
            wanted = list(dict.fromkeys(name for request in batch for name in request.outputs))
            names = list(batch[0].inputs)
            stacked = {name: np.concatenate([r.inputs[name] for r in batch]) for name in names}
        started = time.monotonic_ns()
        try:
            results, elapsed = self._timed_run(stacked, wanted, _rows(stacked))
        except Exception as error:  # every waiting request must hear of it
            for request in batch:
                request.finish(error=error)
            return
        if len(batch) == 1:
            answers = [{name: results[name] for name in batch[0].outputs}]
            rows = batch[0].rows
        else:
            answers, rows = [], 0
            for request in batch:
                end = rows + request.rows
                answers.append({name: results[name][rows:end] for name in request.outputs})
                rows = end
        # Counted before anyone is answered: an answer's statistics already include its run.
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(len(batch), rows, [started - r.arrived for r in batch], elapsed)
            )
        for request, answer in zip(batch, answers, strict=True):
            request.finish(answer)

    # ------------------------------------------------------------------ quick models

    def _inline(self, rows: int) -> bool:
        """Whether the model proved quick for ``rows``: a lone loop request of them runs on
        the loop's thread, a blocking caller's at once on its own."""
        return self._quick_runs >= INLINE_AFTER and rows <= self._quick_rows

    def _timed_run(self, inputs: Arrays, outputs: Sequence[str], rows: int) -> tuple[Results, int]:
        """One run and its wall time; a run's CPU time on this thread tells whether the
        model is quick (wall time alone would not: under load, a quick run waits for the
        GIL), with a bound on its wall time (``_note``)."""
        started, cpu_started = time.monotonic_ns(), time.thread_time_ns()
        try:
            with self._yielding(rows):
                results = self._run(inputs, outputs)
        except Exception:
            self._quick_runs = self._quick_rows = 0
            raise
        elapsed = time.monotonic_ns() - started
        if self._inline_ns > 0:
            self._note(rows, time.thread_time_ns() - cpu_started, elapsed)
        return results, elapsed

    def _yielding(self, rows: int) -> contextlib.AbstractContextManager[None]:
        """Around a run: ONNX Runtime lets go of the GIL, so a slow run gives its caller's
        place to another call meanwhile (``server.pacing``); a quick one keeps it, as
        waking a thread would cost more than the run."""
        return contextlib.nullcontext() if self._inline(rows) else waiting()

    def _note(self, rows: int, cpu_ns: int, wall_ns: int) -> None:
        """Count a quick run, or start counting again after a slow one.

        Quick: at most ``inline_us`` of this thread's CPU, and at most WALL_SLACK times that
        of wall time -- a run that waits long without working (a sleep, a device, threads
        that do the work elsewhere) is slow too, or it would hold its caller's place.
        """
        if cpu_ns <= self._inline_ns and wall_ns <= WALL_SLACK * self._inline_ns:
            self._quick_runs += 1
            self._quick_rows = max(self._quick_rows, rows)
        else:
            self._quick_runs = self._quick_rows = 0

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Finish everything queued and running, then release the batcher's own threads."""
        with self._lock:
            self._closing = True
        while True:
            with self._lock:
                busy = bool(self._queue) or self._in_flight > 0 or self._direct > 0
            if not busy:
                break
            await asyncio.sleep(0.001)
        if self._own_executor:
            await asyncio.to_thread(self._executor.shutdown, wait=True)


def _rows(inputs: Arrays) -> int:
    return len(next(iter(inputs.values())))
