"""An executor that runs few calls at once, but never lets a waiting call hold a place.

Why: on the thread-pool gRPC transport every ModelInfer call runs on a thread of its own,
and threads that are runnable at the same time take turns on the GIL: each turn is a futex
wake and a context switch, which on a small model cost more than the model. Measured on
2 cores with 32 clients of a small model, 4 running threads spent 25-30% less CPU per request
than 16. But a call to a batching model spends most of its time waiting for its batch, and a
batch can only fill with the rows of calls that have been let in: capping the threads
outright cut a slow model's throughput by a third.

So a :class:`PacedExecutor` keeps at most ``running`` calls running, and a call that is about
to wait (for a batch, in ``server.batcher``) says so with :func:`waiting`: while it waits its
place goes to the next queued call, on another thread, up to ``threads`` in all. When it
wakes it runs on at once (briefly over ``running``: holding a woken batch leader back would
hold up its whole batch).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from onnxforge.server import affinity

__all__ = ["PacedExecutor", "waiting"]

_here = threading.local()  # .executor: the PacedExecutor running this thread's call


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Around a blocking wait: the caller's place goes to another call meanwhile.

    Outside a :class:`PacedExecutor`'s thread this does nothing.
    """
    executor: PacedExecutor | None = getattr(_here, "executor", None)
    if executor is None:
        yield
        return
    executor._leave()
    try:
        yield
    finally:
        executor._rejoin()


class PacedExecutor(concurrent.futures.Executor):
    """At most ``running`` calls run at once (calls inside :func:`waiting` do not count),
    on at most ``threads`` threads; calls beyond wait in a queue, oldest first."""

    def __init__(self, running: int, threads: int, name: str = "paced") -> None:
        self.running = max(1, running)
        self.threads = max(self.running, threads)
        self._name = name
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: collections.deque[tuple[concurrent.futures.Future[Any], Callable[[], Any]]]
        self._queue = collections.deque()
        self._workers: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call
        self._active = 0  # calls running and not waiting
        self._closed = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.append((future, lambda: fn(*args, **kwargs)))
            self._dispatch()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
            self._ready.notify_all()
            workers = list(self._workers)
        if wait:
            for worker in workers:
                worker.join()

    # ------------------------------------------------------------------ (locked) helpers

    def _dispatch(self) -> None:
        """Queued calls may start: wake idle threads for them, start more while under the cap.

        Every idle thread (woken or not) takes one queued call, so only the shortfall is
        started afresh.
        """
        can_start = min(len(self._queue), self.running - self._active)
        if can_start <= 0:
            return
        if self._idle:
            self._ready.notify(min(self._idle, can_start))
        for _ in range(min(can_start - self._idle, self.threads - len(self._workers))):
            worker = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._workers)}", daemon=True
            )
            self._workers.append(worker)
            self._idle += 1  # idle until it takes a call
            worker.start()

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1
            self._dispatch()

    def _rejoin(self) -> None:
        with self._lock:
            self._active += 1

    # ------------------------------------------------------------------ the threads

    def _work(self) -> None:
        affinity.unpin()  # started from whichever thread submitted: never the loop's core alone
        _here.executor = self
        while True:
            with self._lock:
                while not self._closed and not (self._queue and self._active < self.running):
                    self._ready.wait()
                if not self._queue:  # closed and nothing left
                    self._idle -= 1
                    return
                future, call = self._queue.popleft()
                self._idle -= 1
                self._active += 1
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as error:  # the caller's future carries it
                    future.set_exception(error)
                else:
                    future.set_result(result)
            del future, call
            with self._lock:
                self._active -= 1
                self._idle += 1
                self._dispatch()
