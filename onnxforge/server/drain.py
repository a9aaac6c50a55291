"""The drain: once a server shuts down, every call gets its full answer or UNAVAILABLE.

:class:`Drain` keeps what the shutdown (``server.app.Running.stop``) waits for and reports:
calls in flight, open streams, when a call last came or went, and how the calls of the
drain ended (answered, refused UNAVAILABLE, cut off). Transports do not touch the counters
themselves: they serve each call inside :meth:`Drain.call` (done by the data plane), each
stream inside :meth:`Drain.stream`, and take a stream's next request with
:meth:`Drain.next_request`, which a drain wakes to end the stream with UNAVAILABLE.

After the calls in flight are done, calls are still answered UNAVAILABLE until none has
arrived or ended for QUIET_SECONDS (at most SETTLE_SECONDS, and never past the grace
period). Only then may the transport stop: gRPC cancels (CANCELLED, not UNAVAILABLE) any
call it has received but not yet handed to the servicer when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from onnxforge.server.errors import Unavailable

QUIET_SECONDS = 0.25
SETTLE_SECONDS = 2.0
POLL_SECONDS = 0.01

T = TypeVar("T")


@dataclass(frozen=True)
class Tally:
    """How the calls of a drain ended."""

    answered: int  # answered in full after draining began
    refused: int  # answered UNAVAILABLE because the server drains
    cut_off: int  # cancelled while being served (client gone, or the grace period over)

    def __sub__(self, other: Tally) -> Tally:
        return Tally(
            self.answered - other.answered,
            self.refused - other.refused,
            self.cut_off - other.cut_off,
        )


class Drain:
    """The counters of one server; see the module docstring."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0  # calls between arrival and answer
        self.cut_off = 0  # calls cancelled while being served (client gone, or shutdown)
        self.answered_draining = 0  # calls answered after draining began
        self.refused_draining = 0  # calls answered UNAVAILABLE because the server drains
        self.last_activity_ns = time.monotonic_ns()  # a call arrived or ended
        self.open_streams = 0  # streams not yet ended
        # The integral of in_flight over time (calls x ns) up to _counted_ns: its change over
        # a stretch of time, divided by that time, is the mean number of calls in flight.
        self._in_flight_ns = 0
        self._counted_ns = self.last_activity_ns
        self._idle_streams: set[asyncio.Task[Any]] = set()  # awaiting their next request
        # Calls begin and end on the transports' threads as well as on the event loop.
        self._lock = threading.Lock()

    def tally(self) -> Tally:
        return Tally(self.answered_draining, self.refused_draining, self.cut_off)

    def touch(self) -> None:
        self.last_activity_ns = time.monotonic_ns()

    def check(self) -> None:
        """Unavailable (counted as refused) once the server drains."""
        if self.draining:
            with self._lock:
                self.refused_draining += 1
            self.touch()
            raise Unavailable("the server is shutting down")

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """One call being served: in flight until it ends; how it ended is counted."""
        self.enter()
        try:
            yield
        except asyncio.CancelledError:
            self.leave(cancelled=True)
            raise
        except BaseException:
            self.leave()
            raise
        self.leave(answered=True)

    def enter(self) -> None:
        """A call begins (what :meth:`call` does, for a caller of its own)."""
        now = time.monotonic_ns()
        with self._lock:
            self._count(now)
            self.in_flight += 1
        self.last_activity_ns = now

    def leave(self, answered: bool = False, cancelled: bool = False) -> None:
        """A call :meth:`enter` began ends: answered in full, cancelled, or otherwise."""
        now = time.monotonic_ns()
        with self._lock:
            if answered and self.draining:
                self.answered_draining += 1
            elif cancelled:
                self.cut_off += 1
            self._count(now)
            self.in_flight -= 1
        self.last_activity_ns = now

    def in_flight_ns(self) -> tuple[int, int]:
        """(calls x ns in flight since the start, now): two readings give the mean number
        of calls in flight between them (what the cluster's autoscaler scales by)."""
        now = time.monotonic_ns()
        with self._lock:
            self._count(now)
            return self._in_flight_ns, now

    def _count(self, now: int) -> None:  # locked
        self._in_flight_ns += self.in_flight * (now - self._counted_ns)
        self._counted_ns = now

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """One stream of calls: the drain waits for it to end."""
        with self._lock:
            self.open_streams += 1
        try:
            yield
        finally:
            with self._lock:
                self.open_streams -= 1
            self.touch()

    async def next_request(self, requests: AsyncIterator[T]) -> T | None:
        """A stream's next request (None when the client ended the stream).

        Raises Unavailable once the server drains, also while waiting: the drain wakes a
        waiting stream (by cancelling its task) so that it ends with UNAVAILABLE.
        """
        task = asyncio.current_task()
        assert task is not None  # a call is always served in a task
        while True:
            self.check()
            self._idle_streams.add(task)
            try:
                return await anext(requests)
            except StopAsyncIteration:
                return None
            except asyncio.CancelledError:
                if not self.draining:
                    raise  # the client went away
            finally:
                self._idle_streams.discard(task)

    def begin(self) -> None:
        """Start draining: new calls are refused, waiting streams are woken to end."""
        self.draining = True
        for stream in list(self._idle_streams):
            stream.cancel()

    async def settle(self, deadline: float) -> None:
        """Until nothing is in flight and no call came or went for QUIET_SECONDS."""
        idle_since: float | None = None  # nothing in flight since then
        while (now := time.monotonic()) < deadline:
            if self.in_flight or self.open_streams:
                idle_since = None
            else:
                idle_since = now if idle_since is None else idle_since
                quiet = now - self.last_activity_ns / 1e9
                if quiet >= QUIET_SECONDS or now - idle_since >= SETTLE_SECONDS:
                    return
            await asyncio.sleep(POLL_SECONDS)
