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


def fake_proc(root: Path, threads: dict[str, list[str]]) -> Path:
    """A /proc with one process per entry: its cmdline ("" for a kernel thread) and each of
    its threads' Cpus_allowed_list."""
    for index, (cmdline, lists) in enumerate(threads.items()):
        process = root / str(100 + index)
        (process / "task").mkdir(parents=True)
        (process / "cmdline").write_bytes(cmdline.split("#")[0].encode())
        for number, allowed in enumerate(lists):
            task = process / "task" / str(1000 + 10 * index + number)
            task.mkdir()
            (task / "status").write_text(f"Name:\tx\nCpus_allowed_list:\t{allowed}\nX:\t1\n")
    return root


def test_loops_go_to_the_cpus_fewest_threads_are_pinned_to_the_last_first(
    fresh: None, tmp_path: Path
) -> None:
    last, before = ALLOWED[-1], ALLOWED[-2]
    everywhere = f"{ALLOWED[0]}-{ALLOWED[-1]}"
    empty = fake_proc(tmp_path / "empty", {})
    assert affinity.loop_cpus(1, empty) == [last]
    # Every worker a CPU of its own, then round again.
    assert affinity.loop_cpus(len(ALLOWED) + 1, empty) == [*reversed(ALLOWED), last]
    # Another server's loop on the last CPU: the next goes to the one before it. Threads
    # free to run anywhere, and the kernel's own per-CPU threads, do not count.
    busy = fake_proc(
        tmp_path / "busy",
        {
            "python -m onnxforge serve": [str(last), everywhere, everywhere],
            "#kernel": [str(before), str(before)],  # empty cmdline: a kernel thread
        },
    )
    assert affinity.pinned_threads(busy) == {last: 1}
    expected = [cpu for cpu in reversed(ALLOWED) if cpu != last] + [last]
    assert affinity.loop_cpus(len(ALLOWED), busy) == expected
    assert expected[0] == before


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
        said = re.search(r"uvloop on CPU (\d+),", server.output)
        assert said is not None and int(said.group(1)) in ALLOWED, server.output
        pid = server.pid
        assert cpus_of(pid, pid) == {int(said.group(1))}  # the main thread runs the loop
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
        said = dict(re.findall(r"\[worker (\d)\].* on CPU (\d+),", server.output))
        assert sorted(said) == ["0", "1"], server.output
        assert said["0"] != said["1"] and {int(cpu) for cpu in said.values()} <= set(ALLOWED)
    finally:
        server.close()


def test_a_second_server_pins_its_loop_where_the_fewest_threads_are_pinned(
    tmp_path: Path,
) -> None:
    """Two servers on one machine: the second sees the first's pinned loop among the
    machine's pinned threads and goes to a CPU with the fewest (on an otherwise idle machine,
    another one than the first's)."""
    first = ServeProcess(make_repository(tmp_path / "a"))
    try:
        cpu = re.search(r"uvloop on CPU (\d+),", first.output)
        assert cpu is not None, first.output
        seen = affinity.pinned_threads()
        assert seen[int(cpu.group(1))] >= 1  # the first server's loop is visible
        fewest = min(seen[c] for c in ALLOWED)
        second = ServeProcess(make_repository(tmp_path / "b"))
        try:
            chosen = re.search(r"uvloop on CPU (\d+),", second.output)
            assert chosen is not None, second.output
            assert seen[int(chosen.group(1))] == fewest, (seen, chosen.group(1))
        finally:
            second.close()
    finally:
        first.close()
