"""The dynamic batcher: merged runs, every caller gets exactly its own rows and outputs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest

from onnxforge.server.batcher import (
    INLINE_AFTER,
    WALL_SLACK,
    Batcher,
    BatchStats,
    RequestCancelled,
)
from onnxforge.server.errors import Code, DeadlineExceeded, QueueFull
from tests.helpers import wait_until, wait_until_async

WEIGHT = np.random.default_rng(0).normal(size=(3, 4))


def busy(seconds: float) -> None:
    """Work (not wait) on this thread for ``seconds`` of its CPU time, as a slow model does."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def model(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """Two outputs that depend on each row alone, like a network's forward pass."""
    x = inputs["x"]
    every = {"product": x @ WEIGHT, "total": x.sum(axis=1, keepdims=True)}
    return {name: every[name] for name in outputs}


class Gate:
    """A run function that records batch sizes and can be held closed."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.batches: list[int] = []
        self.started = threading.Event()

    def __call__(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        self.started.set()
        self.open.wait(10)
        self.batches.append(len(inputs["x"]))
        return model(inputs, outputs)


def test_concurrent_clients_each_get_their_own_rows_and_outputs() -> None:
    stats: list[BatchStats] = []

    async def scenario() -> int:
        batcher = Batcher(
            "m", model, max_batch_size=16, max_queue_delay_us=2000, on_batch=stats.append
        )
        rng = np.random.default_rng(1)
        requests = []
        for i in range(300):
            rows = int(rng.integers(1, 6))
            x = rng.normal(size=(rows, 3)) + i  # distinct values per client
            wanted = [["product"], ["total"], ["product", "total"]][i % 3]
            requests.append((x, wanted))

        async def client(x: np.ndarray, wanted: list[str]) -> None:
            await asyncio.sleep(float(rng.uniform(0, 0.01)))
            got = await batcher.submit({"x": x}, wanted)
            assert set(got) == set(wanted)
            expected = model({"x": x}, wanted)
            for name in wanted:
                # BLAS may round a row differently inside a bigger matrix: ulps, not mix-ups.
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-12)

        await asyncio.gather(*(client(x, wanted) for x, wanted in requests))
        await batcher.close()
        return sum(len(x) for x, _ in requests)

    total_rows = asyncio.run(scenario())
    assert sum(s.rows for s in stats) == total_rows
    assert max(s.rows for s in stats) <= 16
    assert any(s.requests > 1 for s in stats), "nothing was ever merged"
    assert sum(s.requests for s in stats) == 300


def test_a_lone_request_does_not_wait_for_the_delay() -> None:
    async def scenario() -> dict[str, np.ndarray]:
        batcher = Batcher("m", model, max_batch_size=64, max_queue_delay_us=60_000_000)
        try:
            # A one-minute delay must not apply when nothing else is queued.
            return await asyncio.wait_for(batcher.submit({"x": np.ones((1, 3))}, ["total"]), 10)
        finally:
            await batcher.close()

    assert asyncio.run(scenario())["total"].tolist() == [[3.0]]


def test_requests_queued_behind_a_running_batch_are_merged() -> None:
    gate = Gate()

    async def scenario() -> None:
        batcher = Batcher("m", gate, max_batch_size=64, max_queue_delay_us=0)
        gate.open.clear()
        first = asyncio.create_task(batcher.submit({"x": np.ones((2, 3))}, ["total"]))
        await asyncio.to_thread(gate.started.wait, 10)
        waiting = [
            asyncio.create_task(batcher.submit({"x": np.full((k, 3), k)}, ["total"]))
            for k in (1, 2, 3)
        ]
        await wait_until_async(lambda: batcher.queued == 3, "three requests queued")
        gate.open.set()
        results = await asyncio.gather(first, *waiting)
        assert [r["total"][:, 0].tolist() for r in results[1:]] == [[3.0], [6.0, 6.0], [9.0] * 3]
        await batcher.close()

    asyncio.run(scenario())
    assert gate.batches == [2, 6]


def test_queue_is_bounded() -> None:
    gate = Gate()

    async def scenario() -> None:
        batcher = Batcher("m", gate, max_batch_size=1, max_queue_delay_us=0, max_queue=2)
        gate.open.clear()
        running = asyncio.create_task(batcher.submit({"x": np.ones((1, 3))}, ["total"]))
        await asyncio.to_thread(gate.started.wait, 10)
        queued = [
            asyncio.create_task(batcher.submit({"x": np.ones((1, 3))}, ["total"])) for _ in range(2)
        ]
        await wait_until_async(lambda: batcher.queued == 2, "the queue full")
        with pytest.raises(QueueFull) as refused:
            await batcher.submit({"x": np.ones((1, 3))}, ["total"])
        assert refused.value.code == Code.RESOURCE_EXHAUSTED
        gate.open.set()
        await asyncio.gather(running, *queued)
        await batcher.close()

    asyncio.run(scenario())


def test_cancelled_and_expired_requests_leave_the_queue_unrun() -> None:
    gate = Gate()

    async def scenario() -> None:
        batcher = Batcher("m", gate, max_batch_size=64, max_queue_delay_us=0)
        gate.open.clear()
        running = asyncio.create_task(batcher.submit({"x": np.ones((1, 3))}, ["total"]))
        await asyncio.to_thread(gate.started.wait, 10)
        deadline = time.monotonic() + 0.01
        cancelled = asyncio.create_task(batcher.submit({"x": np.ones((5, 3))}, ["total"]))
        expired = asyncio.create_task(
            batcher.submit({"x": np.ones((7, 3))}, ["total"], deadline=deadline)
        )
        kept = asyncio.create_task(batcher.submit({"x": np.ones((2, 3))}, ["total"]))
        await wait_until_async(
            lambda: batcher.queued == 3 and time.monotonic() > deadline,
            "three requests queued, one of them past its deadline",
        )
        cancelled.cancel()
        gate.open.set()
        await running
        assert (await kept)["total"].shape == (2, 1)
        with pytest.raises(DeadlineExceeded, match="deadline exceeded while queued for model 'm'"):
            await expired
        assert cancelled.cancelled()
        assert batcher.queued == 0
        await batcher.close()

    asyncio.run(scenario())
    assert gate.batches == [1, 2]  # neither the 5 cancelled nor the 7 expired rows ran


def test_an_exception_reaches_every_request_of_the_batch() -> None:
    def broken(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        raise RuntimeError("session failed")

    async def scenario() -> list[BaseException]:
        batcher = Batcher("m", broken, max_batch_size=8, max_queue_delay_us=1000)
        tasks = [batcher.submit({"x": np.ones((1, 3))}, ["total"]) for _ in range(5)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        return [r for r in results if isinstance(r, BaseException)]

    errors = asyncio.run(scenario())
    assert len(errors) == 5 and all("session failed" in str(e) for e in errors)


def test_a_request_larger_than_the_batch_runs_alone_and_close_drains() -> None:
    gate = Gate()

    async def scenario() -> None:
        batcher = Batcher("m", gate, max_batch_size=4, max_queue_delay_us=0)
        gate.open.clear()
        tasks = [
            asyncio.create_task(batcher.submit({"x": np.ones((n, 3))}, ["total"]))
            for n in (10, 1, 1)
        ]
        await asyncio.to_thread(gate.started.wait, 10)  # the 10 rows run, the others wait
        await wait_until_async(lambda: batcher.queued == 2, "two requests queued")
        closing = asyncio.create_task(batcher.close())  # must finish what was queued
        await wait_until_async(lambda: batcher._closing, "close() begun, two requests queued")
        assert batcher.queued == 2
        gate.open.set()
        await closing
        assert [len((await t)["total"]) for t in tasks] == [10, 1, 1]

    asyncio.run(scenario())
    assert gate.batches[0] == 10 and sum(gate.batches) == 12


def test_a_quick_model_runs_lone_requests_on_the_loop_until_a_run_is_slow() -> None:
    """Lone requests run on the model's thread until INLINE_AFTER of them were quick, then
    on the event loop's thread (no more rows than measured); one slow run sends them back."""
    ran_on: list[int] = []
    delay = [0.0]  # seconds of work
    waited = [0.0]  # seconds of waiting

    def run(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        ran_on.append(threading.get_ident())
        busy(delay[0])
        time.sleep(waited[0])
        return model(inputs, outputs)

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        batcher = Batcher("m", run, max_batch_size=8, max_queue_delay_us=0, inline_us=200_000)

        async def lone(rows: int) -> int:
            got = await batcher.submit({"x": np.full((rows, 3), rows)}, ["total"])
            assert got["total"][:, 0].tolist() == [3.0 * rows] * rows
            return ran_on[-1]

        for _ in range(INLINE_AFTER):
            assert await lone(2) != loop_thread  # measured on the model's thread first
        assert await lone(1) == loop_thread
        assert await lone(3) != loop_thread  # more rows than any measured run
        waited[0] = 0.5  # a run that waits (for the GIL, say) without working, a while ...
        assert await lone(1) == loop_thread
        waited[0] = 0.0
        assert await lone(1) == loop_thread  # ... is not slow: its CPU time counts (and its
        # wall time only beyond WALL_SLACK x inline_us, 4 s here)
        delay[0] = 0.25  # over inline_us of work on the calling thread: the model turned slow
        assert await lone(1) == loop_thread  # that one run holds the loop up ...
        delay[0] = 0.0
        assert await lone(1) != loop_thread  # ... and the next runs on the thread again
        await batcher.close()

    asyncio.run(scenario())


def test_a_run_that_waits_past_the_wall_bound_is_slow_whatever_its_cpu_time() -> None:
    """A run of little CPU but long waiting (a sleep here; a device, or threads doing the
    work elsewhere) is slow past WALL_SLACK x inline_us: it must not hold its caller's place
    or the loop as a quick one would."""
    ran_on: list[int] = []
    waited = [0.0]

    def run(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        ran_on.append(threading.get_ident())
        time.sleep(waited[0])
        return model(inputs, outputs)

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        inline_us = 20_000  # wall bound: WALL_SLACK x 20 ms = 0.4 s
        batcher = Batcher("m", run, max_batch_size=8, max_queue_delay_us=0,
                          inline_us=inline_us, quick=True)  # fmt: skip
        assert WALL_SLACK * inline_us / 1e6 == pytest.approx(0.4)
        waited[0] = 0.1  # within the bound: still quick
        await batcher.submit({"x": np.ones((1, 3))}, ["total"])
        assert ran_on[-1] == loop_thread
        waited[0] = 0.6  # past it: this run (already inline) counts as slow ...
        await batcher.submit({"x": np.ones((1, 3))}, ["total"])
        waited[0] = 0.0
        await batcher.submit({"x": np.ones((1, 3))}, ["total"])
        assert ran_on[-1] != loop_thread  # ... and the next goes to the model's thread
        await batcher.close()

    asyncio.run(scenario())


def test_a_model_timed_quick_at_load_runs_its_first_lone_request_on_the_loop() -> None:
    """``quick=True`` (``Version.lone_run_ns`` within inline_us) proves the model for one
    row from the start; more rows, or inline_us 0, wait for measured runs as before."""
    ran_on: list[int] = []

    def run(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        ran_on.append(threading.get_ident())
        return model(inputs, outputs)

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        quick = Batcher("m", run, max_batch_size=8, max_queue_delay_us=0, inline_us=200, quick=True)
        never = Batcher("n", run, max_batch_size=8, max_queue_delay_us=0, inline_us=0, quick=True)
        loop = asyncio.get_running_loop()
        wakes = []
        threadsafe = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakes.append(a), threadsafe(*a))[1]  # type: ignore[method-assign]
        got = await quick.submit({"x": np.ones((1, 3))}, ["total"])
        assert got["total"].tolist() == [[3.0]] and ran_on[-1] == loop_thread
        assert wakes == []  # answered on the loop's own thread: no wake-up through its pipe
        await quick.submit({"x": np.ones((2, 3))}, ["total"])
        assert ran_on[-1] != loop_thread  # two rows were never timed
        assert len(wakes) == 1  # answered on the model's thread: the loop is woken
        await never.submit({"x": np.ones((1, 3))}, ["total"])
        assert ran_on[-1] != loop_thread
        await quick.close()
        await never.close()

    asyncio.run(scenario())


def test_a_quick_lone_request_on_the_loop_is_reported_refused_when_late_and_when_closing() -> None:
    """The quick lone path (no queue entry): the run is reported as a batch of its own; a
    request already past its deadline is refused unrun; a closing batcher refuses too."""
    from onnxforge.server.errors import ModelShuttingDown

    ran: list[int] = []
    reported: list[BatchStats] = []

    def run(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        ran.append(len(inputs["x"]))
        return model(inputs, outputs)

    async def scenario() -> None:
        quick = Batcher("m", run, max_batch_size=8, max_queue_delay_us=0, inline_us=200,
                        quick=True, on_batch=reported.append)  # fmt: skip
        x = np.arange(3.0).reshape(1, 3)
        got = await quick.submit({"x": x}, ["product", "total"])
        np.testing.assert_allclose(got["product"], x @ WEIGHT)
        assert got["total"].tolist() == [[3.0]] and ran == [1]
        assert [(b.requests, b.rows, b.queue_ns) for b in reported] == [(1, 1, [0])]
        assert reported[0].compute_ns > 0
        with pytest.raises(DeadlineExceeded):
            await quick.submit({"x": x}, ["total"], deadline=time.monotonic() - 1)
        assert ran == [1] and len(reported) == 1  # refused unrun, and the instance is free:
        assert (await quick.submit({"x": x}, ["total"]))["total"].tolist() == [[3.0]]
        await quick.close()
        with pytest.raises(ModelShuttingDown):
            await quick.submit({"x": x}, ["total"])
        assert ran == [1, 1]

    asyncio.run(scenario())


# ------------------------------------------------------------ callers on threads of their own


def test_threads_lead_and_follow_each_gets_its_own_rows() -> None:
    """64 threads calling run_blocking at once: merged runs, every caller its own rows."""
    stats: list[BatchStats] = []

    def slow_model(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        time.sleep(0.002)  # long enough for callers to queue behind a run
        return model(inputs, outputs)

    batcher = Batcher(
        "m", slow_model, max_batch_size=16, max_queue_delay_us=2000, on_batch=stats.append
    )
    rng = np.random.default_rng(5)
    cases = [(rng.normal(size=(int(rng.integers(1, 5)), 3)) + i, i) for i in range(64)]
    failures: list[BaseException] = []
    start = threading.Barrier(len(cases))

    def caller(x: np.ndarray, i: int) -> None:
        wanted = [["product"], ["total"], ["product", "total"]][i % 3]
        try:
            start.wait(10)
            got = batcher.run_blocking({"x": x}, wanted)
            assert set(got) == set(wanted)
            expected = model({"x": x}, wanted)
            for name in wanted:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-12)
        except BaseException as error:  # reported below, with the others
            failures.append(error)

    threads = [threading.Thread(target=caller, args=case) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures[:3]
    assert sum(s.requests for s in stats) == len(cases)
    assert sum(s.rows for s in stats) == sum(len(x) for x, _ in cases)
    assert max(s.rows for s in stats) <= 16
    assert any(s.requests > 1 for s in stats), "nothing was ever merged"
    asyncio.run(batcher.close())


def test_thread_and_event_loop_callers_share_one_batch() -> None:
    """A blocking caller and loop callers queued behind a running batch run as one batch."""
    gate = Gate()
    batcher = Batcher("m", gate, max_batch_size=64, max_queue_delay_us=0)
    gate.open.clear()
    answers: dict[str, np.ndarray] = {}
    first = threading.Thread(
        target=lambda: answers.update(
            first=batcher.run_blocking({"x": np.ones((1, 3))}, ["total"])["total"]
        )
    )
    first.start()
    assert gate.started.wait(10)
    queued = threading.Thread(
        target=lambda: answers.update(
            thread=batcher.run_blocking({"x": np.full((2, 3), 2.0)}, ["total"])["total"]
        )
    )
    queued.start()
    wait_until(lambda: batcher.queued == 1, "the blocking caller queued")

    async def on_the_loop() -> np.ndarray:
        task = asyncio.create_task(batcher.submit({"x": np.full((3, 3), 3.0)}, ["total"]))
        await wait_until_async(lambda: batcher.queued == 2, "both queued")
        gate.open.set()
        return (await task)["total"]

    answers["loop"] = asyncio.run(on_the_loop())
    first.join(10)
    queued.join(10)
    assert answers["first"][:, 0].tolist() == [3.0]
    assert answers["thread"][:, 0].tolist() == [6.0, 6.0]
    assert answers["loop"][:, 0].tolist() == [9.0, 9.0, 9.0]
    assert gate.batches == [1, 5]  # the two queued callers ran as one batch
    asyncio.run(batcher.close())


def test_a_blocking_caller_past_its_deadline_or_gone_leaves_the_queue_unrun() -> None:
    gate = Gate()
    batcher = Batcher("m", gate, max_batch_size=64, max_queue_delay_us=0)
    gate.open.clear()
    running = threading.Thread(
        target=batcher.run_blocking, args=({"x": np.ones((1, 3))}, ["total"])
    )
    running.start()
    assert gate.started.wait(10)
    outcomes: dict[str, BaseException] = {}
    cancel: list[Callable[[], None]] = []

    def expired() -> None:
        try:
            deadline = time.monotonic() + 0.05
            batcher.run_blocking({"x": np.ones((7, 3))}, ["total"], deadline=deadline)
        except BaseException as error:
            outcomes["expired"] = error

    def gone() -> None:
        try:
            batcher.run_blocking({"x": np.ones((5, 3))}, ["total"], on_cancel=cancel.append)
        except BaseException as error:
            outcomes["gone"] = error

    waiting = [threading.Thread(target=expired), threading.Thread(target=gone)]
    for thread in waiting:
        thread.start()
    deadline = time.monotonic() + 10
    while not (cancel and "expired" in outcomes) and time.monotonic() < deadline:
        time.sleep(0.005)
    cancel[0]()  # the client of the second went away
    for thread in waiting:
        thread.join(10)
    gate.open.set()
    running.join(10)
    assert isinstance(outcomes["expired"], DeadlineExceeded)
    assert isinstance(outcomes["gone"], RequestCancelled)
    assert batcher.queued == 0
    assert gate.batches == [1]  # neither the 7 expired nor the 5 cancelled rows ran
    asyncio.run(batcher.close())


def test_a_quick_models_blocking_requests_run_at_once_on_their_own_threads() -> None:
    """Once INLINE_AFTER runs were quick, a blocking caller runs its request itself, beside
    a run in progress (no queue, no batch); one slow run brings the batching back."""
    ran_on: list[int] = []
    delay = [0.0]
    gate = threading.Event()
    gate.set()

    def run(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict:
        ran_on.append(threading.get_ident())
        gate.wait(10)
        busy(delay[0])
        return model(inputs, outputs)

    batcher = Batcher("m", run, max_batch_size=8, max_queue_delay_us=0, inline_us=200_000)
    for _ in range(INLINE_AFTER):
        batcher.run_blocking({"x": np.ones((2, 3))}, ["total"])
    gate.clear()  # the next run holds its instance until the gate opens
    held = threading.Thread(target=batcher.run_blocking, args=({"x": np.ones((1, 3))}, ["total"]))
    held.start()
    wait_until(lambda: len(ran_on) == INLINE_AFTER + 1, "a run in progress")
    got: dict[str, np.ndarray] = {}
    beside = threading.Thread(
        target=lambda: got.update(batcher.run_blocking({"x": np.full((2, 3), 2.0)}, ["total"]))
    )
    beside.start()
    wait_until(lambda: len(ran_on) == INLINE_AFTER + 2, "a second run beside the first")
    assert batcher.queued == 0  # not queued behind the run in progress
    assert ran_on[-1] == beside.ident and ran_on[-2] == held.ident
    gate.set()
    held.join(10)
    beside.join(10)
    assert got["total"][:, 0].tolist() == [6.0, 6.0]
    delay[0] = 0.25  # over inline_us: the model turned slow
    batcher.run_blocking({"x": np.ones((1, 3))}, ["total"])
    delay[0] = 0.0
    assert not batcher._inline(1)  # batched again until it proves quick once more
    asyncio.run(batcher.close())
