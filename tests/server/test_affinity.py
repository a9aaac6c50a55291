"""The event loop's thread pinned to one core, every other thread free: in process, and
through real servers read from ``/proc`` (one process, a model loaded at run time, workers)."""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from onnxforge.builder import load_spec, reference
from onnxforge.client import InferenceClient
from onnxforge.server import affinity
from tests.conftest import MODELS
from tests.server.conftest import make_repository
from tests.server.processes import ServeProcess

SPEC = load_spec(MODELS / "digits-mlp" / "spec.yaml")
X = np.random.default_rng(9).random((2, 64)).astype(np.float32)
ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 CPUs and sched_setaffinity")


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's state as in a new process (it is process-wide)."""
    monkeypatch.setattr(affinity, "_allowed", None)
    monkeypatch.setattr(affinity, "_pinned", None)


def test_the_loop_cpu_is_the_last_usable_one_and_each_worker_gets_its_own(fresh: None) -> None:
    assert affinity.loop_cpu() == ALLOWED[-1]
    assert affinity.loop_cpu(1) == ALLOWED[-2]
    chosen = {affinity.loop_cpu(worker) for worker in range(len(ALLOWED))}
    assert chosen == set(ALLOWED)  # as many workers as CPUs: one each


def test_threads_started_from_the_pinned_thread_are_freed_by_unpin(fresh: None) -> None:
    """Run in a thread of its own, so that the test process itself stays free."""
    seen: dict[str, set[int]] = {}

    def loop_thread() -> None:
        affinity.pin_loop(ALLOWED[0])
        seen["loop"] = os.sched_getaffinity(0)
        plain = threading.Thread(target=lambda: seen.update(plain=os.sched_getaffinity(0)))
        plain.start()
        plain.join()
        with ThreadPoolExecutor(1, initializer=affinity.unpin) as executor:
            seen["executor"] = executor.submit(os.sched_getaffinity, 0).result()

    thread = threading.Thread(target=loop_thread)
    thread.start()
    thread.join()
    assert seen["loop"] == {ALLOWED[0]} and affinity.pinned_cpu() == ALLOWED[0]
    assert seen["plain"] == {ALLOWED[0]}  # inherited: why every executor unpins
    assert seen["executor"] == set(ALLOWED)
    assert os.sched_getaffinity(0) == set(ALLOWED)  # this thread was never touched


def cpus_of(pid: int, tid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    listed = re.search(r"^Cpus_allowed_list:\s*(\S+)$", text, re.M)
    assert listed is not None
    cpus: set[int] = set()
    for part in listed.group(1).split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def threads_of(pid: int) -> set[int]:
    return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}


def test_a_server_pins_its_loop_and_leaves_every_thread_it_starts_later_free(
    tmp_path: Path,
) -> None:
    repository = make_repository(tmp_path)
    server = ServeProcess(repository)
    try:
        assert f"uvloop on CPU {ALLOWED[-1]}," in server.output
        pid = server.pid
        assert cpus_of(pid, pid) == {ALLOWED[-1]}  # the main thread runs the loop
        before = threads_of(pid)
        with InferenceClient(server.url) as client:
            client.unload("digits-mlp-fp16")
            client.load("digits-mlp-fp16")  # a session opened while the loop is pinned
            got = client.infer("digits-mlp-fp16", {"x": X})["probabilities"]
            np.testing.assert_allclose(got, reference.forward(SPEC, X), atol=2e-3)
        started = threads_of(pid) - before
        assert started, "the load started no thread: nothing checked"
        assert all(cpus_of(pid, tid) == set(ALLOWED) for tid in started)
    finally:
        server.close()


def test_no_pin_loop_leaves_the_loop_free(tmp_path: Path) -> None:
    server = ServeProcess(make_repository(tmp_path), "--no-pin-loop")
    try:
        assert " on CPU " not in server.output
        assert cpus_of(server.pid, server.pid) == set(ALLOWED)
        with InferenceClient(server.url) as client:
            got = client.infer("digits-mlp", {"x": X})["probabilities"]
        np.testing.assert_allclose(got, reference.forward(SPEC, X), atol=1e-5, rtol=1e-4)
    finally:
        server.close()


def test_each_worker_pins_its_loop_to_a_cpu_of_its_own(tmp_path: Path) -> None:
    server = ServeProcess(
        make_repository(tmp_path),
        "--workers",
        "2",
        pattern=r"serving with 2 workers on 127\.0\.0\.1:(\d+)",
    )
    try:
        said = re.findall(r"\[worker (\d)\].* on CPU (\d+),", server.output)
        assert sorted(said) == [("0", str(ALLOWED[-1])), ("1", str(ALLOWED[-2]))], server.output
    finally:
        server.close()
