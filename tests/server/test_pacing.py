"""server.pacing: few calls run at once, a waiting call gives its place, nothing is lost."""

from __future__ import annotations

import threading

import pytest

from onnxforge.server.pacing import PacedExecutor, waiting
from tests.helpers import wait_until


class Census:
    """Counts the calls running (outside ``waiting``) and the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.threads: set[int] = set()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.get_ident())

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def test_no_more_than_running_calls_run_at_once_and_each_answers_its_own() -> None:
    executor = PacedExecutor(running=2, threads=8)
    census = Census()
    release = threading.Event()

    def call(number: int) -> int:
        census.enter()
        release.wait(10)
        census.leave()
        return number * number

    futures = [executor.submit(call, number) for number in range(10)]
    wait_until(lambda: census.now == 2, "two calls running")
    assert sum(future.done() for future in futures) == 0  # the other 8 wait their turn
    release.set()
    assert [future.result(10) for future in futures] == [n * n for n in range(10)]
    assert census.most == 2
    executor.shutdown()


def test_a_waiting_call_gives_its_place_and_takes_it_back_when_woken() -> None:
    """Calls that wait (as a batch's followers do) let the queued calls in, up to the thread
    cap; the running count never counts the waiters."""
    executor = PacedExecutor(running=1, threads=6)
    census = Census()
    arrived = threading.Semaphore(0)
    batch_done = threading.Event()

    def follower(number: int) -> int:
        census.enter()
        census.leave()
        arrived.release()
        with waiting():
            batch_done.wait(10)
        census.enter()  # woken: runs on at once
        census.leave()
        return number

    futures = [executor.submit(follower, number) for number in range(8)]
    for _ in range(6):  # six threads: six calls get in and wait, though one runs at a time
        assert arrived.acquire(timeout=10)
    assert not arrived.acquire(timeout=0.2)  # the cap on threads holds the last two back
    assert census.most == 1
    batch_done.set()
    assert [future.result(10) for future in futures] == list(range(8))
    assert len(census.threads) == 6
    executor.shutdown()


def test_an_exception_reaches_the_callers_future_and_the_thread_serves_on() -> None:
    executor = PacedExecutor(running=1, threads=1)

    def fail() -> None:
        raise ValueError("bad request")

    failing = executor.submit(fail)
    with pytest.raises(ValueError, match="bad request"):
        failing.result(10)
    assert executor.submit(lambda: 42).result(10) == 42
    executor.shutdown()


def test_shutdown_finishes_what_is_queued_or_cancels_it_and_refuses_more() -> None:
    executor = PacedExecutor(running=1, threads=1)
    release = threading.Event()
    first = executor.submit(release.wait, 10)
    queued = executor.submit(lambda: "queued")
    stopping = threading.Thread(target=executor.shutdown)
    stopping.start()
    release.set()
    stopping.join(10)
    assert first.result(10) is True and queued.result(10) == "queued"
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit(lambda: None)

    cancelling = PacedExecutor(running=1, threads=1)
    hold = threading.Event()
    running = cancelling.submit(hold.wait, 10)
    dropped = cancelling.submit(lambda: "never")
    wait_until(lambda: running.running(), "the first call running")
    cancelling.shutdown(wait=False, cancel_futures=True)
    hold.set()
    assert running.result(10) is True and dropped.cancelled()


def test_waiting_outside_a_paced_thread_does_nothing() -> None:
    with waiting():
        pass  # no executor on this thread: nothing to give up, nothing raised
