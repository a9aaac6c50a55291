"""Load and faults: sustained load, model changes under traffic, SIGTERM, disconnects, deadlines.

Every loop here is bounded in count and in time, and every server binds 127.0.0.1. Each
scenario counts what it sent and what came back: *answered* (and checked against the NumPy
reference), *refused* with a status the scenario allows, and *lost* (anything else: a wrong
answer, another status, no answer). The numbers are printed (``pytest -s``) for the record.

The in-process servers (``ServerThread``) let a test look inside after a fault: the
data plane's ``in_flight`` counter (its drain), each batcher's queue, the batcher tasks alive on the
server's loop, and how many times the ONNX Runtime session really ran (``SlowSession``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from onnxforge.builder import load_spec, reference
from onnxforge.client import (
    AsyncInferenceClient,
    DeadlineExceeded,
    InferenceClient,
    InferenceServerError,
    infer_request,
)
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server.app import Settings
from onnxforge.server.registry import State
from tests.conftest import MODELS, REPO_ROOT
from tests.helpers import mlp_document, wait_until
from tests.server.conftest import ServerThread
from tests.server.processes import ServeProcess

REFUSED = {"UNAVAILABLE", "NOT_FOUND"}
WAIT = 30.0  # seconds: the bound on every wait for a server-side condition
X64 = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)  # a full batch (tiny specs)


# ---------------------------------------------------------------------------- helpers


def _write_atomically(path: Path, text: str) -> None:
    """What a careful deploy does: the watcher never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def _tiny_spec(repository: Path, name: str, **overrides: Any) -> Path:
    path = repository / name / "spec.yaml"
    _write_atomically(path, yaml.safe_dump(mlp_document(name=name, **overrides)))
    return path


def _bundled_fp32(repository: Path, name: str) -> Path:
    """A bundled model's spec (and weights) with the fp32 variant only: quick to build."""
    (repository / name).mkdir(parents=True)
    for file in (MODELS / name).glob("*.npz"):
        shutil.copy(file, repository / name / file.name)
    text = (MODELS / name / "spec.yaml").read_text()
    text = re.sub(r"^variants: .*$", "variants: [fp32]", text, flags=re.M)
    (repository / name / "spec.yaml").write_text(text)
    return repository / name / "spec.yaml"


def _more_than(counts: Counter[str], key: str, value: int) -> bool:
    return counts[key] > value


def _ran(session: SlowSession) -> bool:
    return session.runs > 0


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert found is not None, status
    return int(found.group(1))


def _stop_process(server: ServeProcess) -> None:
    server.close()


class SlowSession:
    """An ONNX Runtime session that sleeps ``delay`` s before each run and counts its runs.

    Installed as ``Version.session``: ``Version.run`` (called by the batcher's worker, or
    directly when the model does not batch) looks the session up on every call.
    """

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.started: list[float] = []  # time.monotonic() at the start of each run
        self.rows: list[int] = []
        self._lock = threading.Lock()

    def run(self, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            self.started.append(time.monotonic())
            self.rows.append(len(next(iter(feeds.values()))))
        time.sleep(self.delay)
        return self.inner.run(outputs, feeds)

    @property
    def runs(self) -> int:
        return len(self.started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _slow_down(server: ServerThread, name: str, delay: float) -> SlowSession:
    assert server.running is not None
    version = server.running.registry.entries[name].versions["1"]
    slow = SlowSession(version.session, delay)
    version.session = slow
    return slow


def _busy_batchers(server: ServerThread) -> list[str]:
    """Versions whose batcher still holds a queued request or a run (none, once settled)."""
    assert server.running is not None
    return sorted(
        f"{name}/{number}"
        for name, entry in server.running.registry.entries.items()
        for number, version in entry.versions.items()
        if version.runs.queued or version.runs._in_flight
    )


def _queued(server: ServerThread) -> dict[str, int]:
    assert server.running is not None
    return {
        f"{name}/{number}": version.batcher.queued
        for name, entry in server.running.registry.entries.items()
        for number, version in entry.versions.items()
        if version.batcher is not None
    }


def _settled(server: ServerThread) -> bool:
    assert server.running is not None
    return server.running.plane.drain.in_flight == 0 and not any(_queued(server).values())


def _model_threads() -> int:
    """Session threads alive in this process (the registry names them ``model-<name>_<i>``)."""
    return sum(thread.name.startswith("model-") for thread in threading.enumerate())


def _thread_allowance(server: ServerThread) -> int:
    """The most session threads the READY versions may hold: one per instance."""
    assert server.running is not None
    return sum(
        version.serving.instances
        for entry in server.running.registry.entries.values()
        if entry.state == State.READY
        for version in entry.versions.values()
    )


def _nothing_replaced_left(server: ServerThread, threads_before: int) -> bool:
    """No batcher holds anything, and no more session threads than READY versions may."""
    alive = _model_threads() - threads_before
    return not _busy_batchers(server) and alive <= _thread_allowance(server)


def _index(address: str) -> dict[str, pb.RepositoryIndexResponse.ModelIndex]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}


def _statistics(address: str, name: str) -> pb.ModelStatistics:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=WAIT)
    (stats,) = reply.model_stats
    return stats


@dataclass
class Tally:
    """What one scenario sent and what came back, per model."""

    sent: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    lost_why: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, model: str, outcome: str, why: str = "") -> None:
        with self.lock:
            self.sent[model] += 1
            getattr(self, outcome)[model] += 1
            if outcome == "lost" and len(self.lost_why) < 20:
                self.lost_why.append(f"{model}: {why}")

    def table(self) -> dict[str, dict[str, int]]:
        return {
            model: {
                "sent": self.sent[model],
                "answered": self.answered[model],
                "refused": self.refused[model],
                "lost": self.lost[model],
            }
            for model in sorted(self.sent)
        }


# ---------------------------------------------------------------------------- (a) load


@pytest.mark.slow
def test_sustained_load_every_answer_right_and_memory_bounded(tmp_path: Path) -> None:
    """20,000 requests from 32 asyncio clients: no error, every answer checked, RSS flat.

    RSS is read from /proc after a 2,000-request warm-up (sessions, arenas and gRPC buffers
    have reached their working size) and again after 10,000 and 20,000 more requests.
    Growth over the 20,000 must stay under 8 MiB, and under 4 MiB over the second 10,000:
    a leak of 512 bytes per request would add about 10 MiB (4.9 MiB per half). Measured
    on 2 cores: +0.8 MiB (124.1 -> 124.9 MiB).
    """
    spec_path = _bundled_fp32(tmp_path, "digits-mlp")
    spec = load_spec(spec_path)
    rng = np.random.default_rng(7)
    pool = [rng.uniform(size=(1 + i % 8, 64)).astype(np.float32) for i in range(64)]
    wanted = [reference.run(spec, x) for x in pool]
    total, warmup, concurrency = 20_000, 2_000, 32

    server = ServeProcess(tmp_path)
    try:

        async def drive(count: int, checkpoints: Sequence[int] = ()) -> dict[str, Any]:
            issued = 0
            done = 0
            tally = Tally()
            rss: dict[int, int] = {}

            async def client(number: int) -> None:
                nonlocal issued, done
                async with AsyncInferenceClient(server.url) as inference:
                    while issued < count:
                        index = issued % len(pool)
                        issued += 1
                        try:
                            got = await inference.infer(
                                "digits-mlp", {"x": pool[index]}, timeout=30
                            )
                        except InferenceServerError as error:
                            tally.add("digits-mlp", "lost", error.code)
                        else:
                            want = wanted[index]
                            right = got.keys() == want.keys() and all(
                                np.allclose(got[k], want[k], atol=1e-5, rtol=0) for k in want
                            )
                            tally.add("digits-mlp", "answered" if right else "lost", "wrong answer")
                        done += 1
                        if done in checkpoints:
                            rss[done] = _rss_kib(server.process.pid)

            began = time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(*(client(i) for i in range(concurrency))), timeout=300
            )
            return {"tally": tally, "seconds": time.perf_counter() - began, "rss": rss}

        asyncio.run(drive(warmup))
        before = _rss_kib(server.process.pid)
        measured = asyncio.run(drive(total, checkpoints=(total // 2,)))
        after = _rss_kib(server.process.pid)
    finally:
        _stop_process(server)
    tally: Tally = measured["tally"]
    middle = measured["rss"][total // 2]
    print(
        f"\n(a) {tally.table()} in {measured['seconds']:.1f} s "
        f"({total / measured['seconds']:.0f} req/s, concurrency {concurrency}); server RSS "
        f"{before / 1024:.1f} MiB after warm-up, {middle / 1024:.1f} MiB after {total // 2:,}, "
        f"{after / 1024:.1f} MiB after {total:,} (+{(after - before) / 1024:.2f} MiB)"
    )
    assert tally.sent["digits-mlp"] == total
    assert tally.answered["digits-mlp"] == total, tally.lost_why
    assert after - before < 8 * 1024, (before, middle, after)
    assert after - middle < 4 * 1024, (before, middle, after)


# ---------------------------------------------------------------------------- (b) changes


def _traffic(
    address: str,
    model: str,
    x: np.ndarray,
    legitimate: Callable[[], list[np.ndarray]],
    tally: Tally,
    stop: threading.Event,
    refusals: list[tuple[str, float, float, str]],
    limit: int = 20_000,
) -> None:
    """Requests to ``model`` until ``stop`` (at most ``limit``); every outcome counted."""
    with InferenceClient(address) as client:
        for _ in range(limit):
            if stop.is_set():
                return
            sent = time.monotonic()
            try:
                got = client.infer(model, {"x": x}, timeout=WAIT)["y"]
            except InferenceServerError as error:
                returned = time.monotonic()
                if error.code in REFUSED:
                    tally.add(model, "refused")
                    refusals.append((model, sent, returned, str(error)))
                    time.sleep(0.005)  # a refused client backs off a little
                else:
                    tally.add(model, "lost", str(error))
                continue
            if any(np.allclose(got, want, atol=1e-6, rtol=0) for want in legitimate()):
                tally.add(model, "answered")
            else:
                tally.add(model, "lost", f"answer matches no legitimate version: {got[0]}")


def test_unload_reload_and_watch_changes_under_traffic(tmp_path: Path) -> None:
    """Four models under traffic while they are unloaded, reloaded, rebuilt and removed.

    alpha: RepositoryModelUnload, then RepositoryModelLoad, then a reload while loaded.
    beta: its spec is rewritten with another seed (--watch rebuilds and swaps it).
    gamma: its folder is removed (--watch unloads it), then written back.
    delta: untouched. Only alpha (while unloaded) and gamma (while removed) may refuse,
    with UNAVAILABLE or NOT_FOUND; every answer equals one legitimate version's output.
    """
    paths = {
        "alpha": _tiny_spec(tmp_path, "alpha", seed=1),
        "beta": _tiny_spec(tmp_path, "beta", seed=2),
        "gamma": _tiny_spec(tmp_path, "gamma", seed=3),
        "delta": _tiny_spec(tmp_path, "delta", seed=4),
    }
    gamma_text = paths["gamma"].read_text()
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    outputs = {name: [reference.forward(load_spec(path), x)] for name, path in paths.items()}
    beta_new = reference.forward(load_spec(_tiny_spec(tmp_path / "scratch", "beta", seed=7)), x)
    threads_before = _model_threads()
    server = ServerThread(
        Settings(repository=tmp_path, port=0, metrics_port=None, threads=1, watch_seconds=0.1)
    ).start()
    tally = Tally()
    refusals: list[tuple[str, float, float, str]] = []
    gone: dict[str, list[tuple[float, float]]] = {"alpha": [], "gamma": []}
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_traffic,
            args=(server.address, name, x, lambda n=name: outputs[n], tally, stop, refusals),
        )
        for name in paths
        for _ in range(2)
    ]
    began = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: all(tally.answered[n] >= 20 for n in paths), "warm traffic")
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _round in range(2):
                # alpha: unloaded (really gone for a while), then loaded again.
                start = time.monotonic()
                refused = tally.refused["alpha"]
                stub.RepositoryModelUnload(
                    pb.RepositoryModelUnloadRequest(model_name="alpha"), timeout=WAIT
                )
                wait_until(
                    functools.partial(_more_than, tally.refused, "alpha", refused),
                    "alpha refused while unloaded",
                )
                stub.RepositoryModelLoad(
                    pb.RepositoryModelLoadRequest(model_name="alpha"), timeout=WAIT
                )
                gone["alpha"].append((start, time.monotonic()))
                seen = tally.answered["alpha"]
                wait_until(
                    functools.partial(_more_than, tally.answered, "alpha", seen + 20),
                    "alpha back",
                )
                # A load of a loaded model is a reload: nothing may fail.
                stub.RepositoryModelLoad(
                    pb.RepositoryModelLoadRequest(model_name="alpha"), timeout=WAIT
                )
        # beta: a new seed; --watch rebuilds it and swaps the session.
        _tiny_spec(tmp_path, "beta", seed=7)
        outputs["beta"].append(beta_new)
        with InferenceClient(server.address) as client:
            wait_until(
                lambda: np.allclose(client.infer("beta", {"x": x})["y"], beta_new, atol=1e-6),
                "beta rebuilt",
            )
        # gamma: removed from the repository, then put back.
        start = time.monotonic()
        shutil.rmtree(tmp_path / "gamma")
        wait_until(lambda: _index(server.address)["gamma"].state == "UNAVAILABLE", "gamma unloaded")
        seen = tally.refused["gamma"]
        wait_until(lambda: tally.refused["gamma"] > seen, "gamma refused while gone")
        _write_atomically(paths["gamma"], gamma_text)
        wait_until(lambda: _index(server.address)["gamma"].state == "READY", "gamma back")
        gone["gamma"].append((start, time.monotonic()))
        seen = tally.answered["gamma"]
        wait_until(lambda: tally.answered["gamma"] > seen + 20, "gamma answering")
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        elapsed = time.monotonic() - began
        try:
            wait_until(lambda: _settled(server), "server settled")
            leftover = _busy_batchers(server)
            session_threads = _model_threads() - threads_before, _thread_allowance(server)
        finally:
            server.stop()
    print(f"\n(b) {tally.table()} in {elapsed:.1f} s; session threads {session_threads}")
    assert not tally.lost_why, tally.lost_why
    assert not any(thread.is_alive() for thread in threads)
    # Refused only while really gone: the request overlapped an unload..load window.
    for model, sent, returned, why in refusals:
        windows = gone.get(model, [])
        assert any(sent <= end and returned >= start for start, end in windows), (model, why)
    assert not tally.refused["beta"] and not tally.refused["delta"]
    assert tally.refused["alpha"] > 0 and tally.refused["gamma"] > 0  # the faults did land
    assert all(tally.answered[name] > 100 for name in paths)
    assert leftover == [], "batchers still hold requests or runs"
    alive, allowed = session_threads
    assert alive <= allowed, "threads of replaced or unloaded versions are still alive"


def _hammer(address: str, model: str, x: np.ndarray, stop: threading.Event) -> None:
    with InferenceClient(address) as client:
        for _ in range(100_000):
            if stop.is_set():
                return
            try:
                client.infer(model, {"x": x}, timeout=WAIT)
            except InferenceServerError:
                time.sleep(0.001)


def test_a_load_racing_an_unload_leaves_no_batcher_behind(tmp_path: Path) -> None:
    """RepositoryModelLoad, and RepositoryModelUnload while that load is still opening files.

    Opening takes 0.3 s here (as a big model's does) and the old version is busy (0.1 s
    per run, 8 clients queued), so the unload arrives while the load holds the model's
    lock, and traffic reaches the new version while the old one works through its queue.
    Whichever order the server takes them in, afterwards the model is READY with its one
    batcher or UNAVAILABLE with none: nothing of a replaced entry may survive. (Unload
    used to read the entry before taking the lock, and left the new entry's batcher task
    and session alive for the life of the server.)
    """
    _tiny_spec(tmp_path, "alpha")
    threads_before = _model_threads()
    server = ServerThread(Settings(repository=tmp_path, port=0, metrics_port=None, threads=1))
    server.start()
    assert server.running is not None
    registry = server.running.registry
    opening = registry._open_versions
    entered = threading.Event()  # the load is inside slow_open

    def slow_open(name: str) -> Any:
        entered.set()
        time.sleep(0.3)  # a big model's files take this long: the unload arrives meanwhile
        return opening(name)

    stop = threading.Event()
    # Full batches: the old version works through its queue one request at a time, so
    # while it finishes, the clients it has answered already send to the new version.
    threads = [
        threading.Thread(target=_hammer, args=(server.address, "alpha", X64, stop))
        for _ in range(8)
    ]
    outcomes = []
    try:
        for thread in threads:
            thread.start()
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            load = pb.RepositoryModelLoadRequest(model_name="alpha")
            unload = pb.RepositoryModelUnloadRequest(model_name="alpha")
            for _round in range(2):
                stub.RepositoryModelLoad(load, timeout=WAIT)  # READY, whatever happened before
                slow = _slow_down(server, "alpha", 0.1)
                wait_until(functools.partial(_ran, slow), "the old version busy")
                registry._open_versions = slow_open  # type: ignore[method-assign]
                entered.clear()
                try:
                    loading = stub.RepositoryModelLoad.future(load, timeout=WAIT)
                    wait_until(entered.is_set, "the load is opening files")
                    unloading = stub.RepositoryModelUnload.future(unload, timeout=WAIT)
                    loading.result()
                    unloading.result()
                finally:
                    registry._open_versions = opening  # type: ignore[method-assign]
                wait_until(
                    lambda: _nothing_replaced_left(server, threads_before),
                    "the replaced entry's batcher and session threads gone",
                )
                state = registry.entries["alpha"].state
                session_threads = _model_threads() - threads_before, _thread_allowance(server)
                outcomes.append(
                    (
                        state.value,
                        _busy_batchers(server),
                        session_threads,
                    )
                )
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        server.stop()
    print(
        "\n(b) load racing unload, (state, busy batchers, (session threads, "
        f"allowed)) per round: {outcomes}"
    )
    for _state, busy, (alive, allowed) in outcomes:
        assert busy == [], "a batcher still holds requests or runs"
        assert alive <= allowed, "threads of a replaced entry are still alive"


def test_a_broken_spec_under_watch_keeps_the_old_version_serving(tmp_path: Path) -> None:
    """A spec edited into an invalid one while traffic runs: the old version keeps serving.

    watch.py promises "a reload that fails leaves the old version serving with the reason
    in RepositoryIndex"; a rebuild that fails is such a reload. (A failed build used to
    replace the READY entry: requests were refused with "not ready: loading" until the
    watcher reloaded the old files, the reason was lost, and the old batcher never closed.)
    """
    path = _tiny_spec(tmp_path, "alpha", seed=1)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    want = reference.forward(load_spec(path), x)
    server = ServerThread(
        Settings(repository=tmp_path, port=0, metrics_port=None, threads=1, watch_seconds=0.1)
    ).start()
    tally = Tally()
    refusals: list[tuple[str, float, float, str]] = []
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_traffic,
            args=(server.address, "alpha", x, lambda: [want], tally, stop, refusals),
        )
        for _ in range(3)
    ]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: tally.answered["alpha"] >= 20, "warm traffic")
        assert server.running is not None
        entries = server.running.registry.entries
        original = entries["alpha"]
        broken = mlp_document(name="alpha", seed=5)
        broken["layers"][0]["type"] = "dense-ish"
        _write_atomically(path, yaml.safe_dump(broken))
        # The watcher has dealt with the change: the failure is recorded, or (as now) the
        # entry was replaced and the old files loaded again.
        wait_until(
            lambda: (
                "dense-ish" in entries["alpha"].reason
                or (entries["alpha"] is not original and entries["alpha"].state == State.READY)
            ),
            "the watcher handled the broken spec",
        )
        seen = tally.sent["alpha"]
        wait_until(lambda: tally.sent["alpha"] > seen + 50, "traffic after the change")
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        try:
            wait_until(lambda: _settled(server), "server settled")
            index = _index(server.address)["alpha"]
            leftover = _busy_batchers(server)
        finally:
            server.stop()
    print(f"\n(b) broken spec under watch: {tally.table()}; refusals {refusals[:3]}")
    assert not refusals and not tally.lost_why
    assert index.state == "READY" and "previous version still serving" in index.reason
    assert leftover == [], "a batcher still holds requests or runs"


# ---------------------------------------------------------------------------- (c) SIGTERM


def test_sigterm_under_high_concurrency_answers_every_accepted_request(tmp_path: Path) -> None:
    """64 asyncio clients on the wide model; SIGTERM mid-traffic; exit 0, nothing cut off.

    Each client sends until its first refusal. Every request is answered (and right) or
    refused with UNAVAILABLE before it reached a model; none is lost. The requests the
    server says it answered during the drain were answered after the signal, and it
    refused exactly one request per client. (``test_drain.py`` holds every outcome to
    this with streams and ``--workers 2`` too.)
    """
    spec = load_spec(_bundled_fp32(tmp_path, "wide-mlp"))
    rng = np.random.default_rng(3)
    pool = [rng.normal(size=(16, 512)).astype(np.float32) for _ in range(8)]
    wanted = [reference.forward(spec, x) for x in pool]
    concurrency = 64
    server = ServeProcess(tmp_path)
    tally = Tally()
    after_signal = 0
    signalled: float | None = None

    async def drive() -> None:
        nonlocal after_signal, signalled
        answered_once = asyncio.Event()

        async def client(number: int) -> None:
            nonlocal after_signal
            async with AsyncInferenceClient(server.url) as inference:
                for attempt in range(10_000):
                    index = (number + attempt) % len(pool)
                    try:
                        got = await inference.infer("wide-mlp", {"x": pool[index]}, timeout=60)
                    except InferenceServerError as error:
                        if error.code == "UNAVAILABLE":
                            tally.add("wide-mlp", "refused")
                        else:
                            tally.add("wide-mlp", "lost", str(error))
                        return
                    right = np.allclose(got["probabilities"], wanted[index], atol=1e-5, rtol=0)
                    tally.add("wide-mlp", "answered" if right else "lost", "wrong answer")
                    if signalled is not None:
                        after_signal += 1
                    if sum(tally.answered.values()) >= 4 * concurrency:
                        answered_once.set()

        async def terminate() -> None:
            nonlocal signalled
            await asyncio.wait_for(answered_once.wait(), timeout=120)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

        await asyncio.wait_for(
            asyncio.gather(terminate(), *(client(i) for i in range(concurrency))), timeout=180
        )

    began = time.monotonic()
    try:
        asyncio.run(drive())
        code = server.process.wait(60)
        server.closed.wait(10)
    finally:
        _stop_process(server)
    assert signalled is not None
    log = "".join(server.lines)
    stopped = re.search(
        r"stopped: (\d+) answered during the drain, (\d+) refused UNAVAILABLE, (\d+) cut off", log
    )
    print(
        f"\n(c) {tally.table()}, {after_signal} answered after SIGTERM; server: "
        f"{stopped.group(0) if stopped else 'no stop line'}; exit {code}; "
        f"{time.monotonic() - began:.1f} s"
    )
    assert code == 0, log
    assert "shutting down: finishing in-flight requests" in log
    assert stopped is not None and stopped.group(3) == "0", log
    drained = int(stopped.group(1))
    assert drained > 0, "SIGTERM did not land mid-traffic"
    assert after_signal >= drained
    assert int(stopped.group(2)) == concurrency  # each client's refusal, from the servicer
    assert not tally.lost_why, tally.lost_why
    assert tally.refused["wide-mlp"] == concurrency  # each client stops at its refusal
    assert tally.sent["wide-mlp"] == tally.answered["wide-mlp"] + concurrency


# ---------------------------------------------------------------------------- (d) disconnects


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[tuple[ServerThread, SlowSession, np.ndarray]]:
    """A tiny batched model whose session takes 0.4 s per run; (server, session, reference)."""
    path = _tiny_spec(tmp_path, "alpha", seed=1)
    server = ServerThread(
        Settings(repository=tmp_path, port=0, metrics_port=None, threads=1)
    ).start()
    slow = _slow_down(server, "alpha", 0.4)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    try:
        yield server, slow, reference.forward(load_spec(path), x)
    finally:
        server.stop()


def _after_the_fault(
    server: ServerThread, slow: SlowSession, want: np.ndarray, runs: int | None = None
) -> None:
    """Settled: nothing in flight or queued, statistics and index answer, a request works.

    The request goes through the same queue as everything before it, so its answer comes
    after any leftover run: ``slow.runs == runs + 1`` then says nothing else ran (``runs``:
    the session runs counted when the fault settled, if the caller took them).
    """
    wait_until(lambda: _settled(server), "in flight and queue back to 0")
    runs = slow.runs if runs is None else runs
    assert slow.runs == runs
    index = _index(server.address)
    assert index["alpha"].state == "READY"
    # A run still going when the fault settled is counted when it ends: every session run
    # is counted, and nothing else.
    wait_until(
        lambda: _statistics(server.address, "alpha").execution_count == runs,
        f"ModelStatistics counting the {runs} session run(s)",
    )
    assert _busy_batchers(server) == []
    slow.delay = 0.0
    with InferenceClient(server.address) as client:
        np.testing.assert_allclose(
            client.infer("alpha", {"x": X64}, timeout=5)["y"], want, atol=1e-6
        )
    assert slow.runs == runs + 1


# A client in a process of its own: sends N requests, then waits to be killed (60 s at most).
CLIENT = textwrap.dedent(
    """
    import sys, time
    import grpc
    import numpy as np
    from onnxforge.client import infer_request
    from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
    channel = grpc.insecure_channel(sys.argv[1])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    calls = [stub.ModelInfer.future(infer_request("alpha", {"x": x}), timeout=60)
             for _ in range(int(sys.argv[2]))]
    time.sleep(60)
    """
)


@pytest.mark.parametrize("how", ["channel-closed", "process-killed"])
def test_a_client_that_disconnects_mid_request(
    slow_server: tuple[ServerThread, SlowSession, np.ndarray], how: str
) -> None:
    """8 requests in flight (one running, seven queued), then the client goes away.

    channel-closed: the client closes its channel (gRPC cancels each call);
    process-killed: the client process is SIGKILLed (the connection just drops).
    The running request finishes on the session, the queued ones are never run, and the
    server is left with nothing in flight, an empty queue and its statistics intact.
    """
    server, slow, want = slow_server
    assert server.running is not None
    drain = server.running.plane.drain
    count, cut_before = 8, drain.cut_off
    began = time.monotonic()
    if how == "channel-closed":
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            stub.ModelInfer.future(infer_request("alpha", {"x": X64}), timeout=WAIT)
            for _ in range(count)
        ]
        wait_until(lambda: drain.in_flight == count, "all requests in flight")
        runs_at_fault = slow.runs  # 1: the others wait behind a 0.4 s run
        channel.close()
        codes = Counter(call.exception().code().name for call in calls)
        assert codes == {"CANCELLED": count}
    else:
        process = subprocess.Popen(
            [sys.executable, "-c", CLIENT, server.address, str(count)],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: drain.in_flight == count, "all requests in flight")
            runs_at_fault = slow.runs
            process.kill()
        finally:
            process.kill()
            process.wait(WAIT)
    wait_until(lambda: _settled(server), "in flight and queue back to 0")
    print(
        f"\n(d) {how}: sent {count}, answered 0, cut off {drain.cut_off - cut_before}, "
        f"session runs {slow.runs} (rows {slow.rows}); settled after "
        f"{time.monotonic() - began:.2f} s"
    )
    assert drain.cut_off - cut_before == count
    assert 1 <= runs_at_fault < count
    assert slow.runs == runs_at_fault  # the queued requests never ran after the client left
    assert slow.rows == [64] * slow.runs  # one request per run
    _after_the_fault(server, slow, want)


def test_a_cancelled_stream_leaves_nothing_behind(
    slow_server: tuple[ServerThread, SlowSession, np.ndarray],
) -> None:
    """Four ModelStreamInfer streams, each cancelled after its first answer.

    Each stream offers 5 requests; the server serves a stream's requests one after the
    other, so when a stream is cancelled at most one more of its requests is in progress.
    """
    server, slow, want = slow_server
    streams, per_stream = 4, 5
    sent = Counter[int]()
    lock = threading.Lock()

    def requests(number: int) -> Iterator[pb.ModelInferRequest]:
        for i in range(per_stream):
            with lock:
                sent[number] += 1
            yield infer_request("alpha", {"x": X64}, request_id=f"{number}-{i}")

    answered: list[pb.ModelStreamInferResponse] = []
    codes: list[str] = []
    began = time.monotonic()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [stub.ModelStreamInfer(requests(n), timeout=WAIT) for n in range(streams)]
        for call in calls:
            answered.append(next(call))
            call.cancel()
        for call in calls:
            with pytest.raises(grpc.RpcError) as error:
                next(call)
            codes.append(error.value.code().name)
    wait_until(lambda: _settled(server), "in flight and queue back to 0")
    runs = slow.runs
    print(
        f"\n(d) stream cancelled: {streams} streams offered {sum(sent.values())} requests "
        f"(offered by the clients: {dict(sent)}), answered {len(answered)}, session runs {runs}; "
        f"{time.monotonic() - began:.2f} s"
    )
    assert codes == ["CANCELLED"] * streams
    assert all(not a.error_message for a in answered)
    for a in answered:
        np.testing.assert_allclose(
            np.frombuffer(a.infer_response.raw_output_contents[0], np.float32).reshape(64, -1),
            want,
            atol=1e-6,
        )
    # At most one request per stream beyond the answered one reached the session.
    assert len(answered) <= runs <= len(answered) + streams
    _after_the_fault(server, slow, want, runs)  # and nothing of the streams ran later
    # A new stream on the same server is served in full.
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        replies = list(
            stub.ModelStreamInfer(
                iter([infer_request("alpha", {"x": X64}, request_id=str(i)) for i in range(3)]),
                timeout=WAIT,
            )
        )
    assert [r.infer_response.id for r in replies] == ["0", "1", "2"]
    assert _settled(server)


# ---------------------------------------------------------------------------- (e) deadlines


def _wave(address: str, clients: int, timeout: float) -> tuple[list[tuple[str, float]], float]:
    """``clients`` requests at once, each with ``timeout``; (outcome, seconds) each, and the
    latest deadline (time.monotonic())."""
    results: list[tuple[str, float]] = []
    deadlines: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def one() -> None:
        with InferenceClient(address) as client:
            client.ready()  # connected before the clock starts
            barrier.wait(WAIT)
            started = time.monotonic()
            with lock:
                deadlines.append(started + timeout)
            try:
                client.infer("alpha", {"x": X64}, timeout=timeout)
                outcome = "OK"
            except InferenceServerError as error:
                outcome = error.code
            with lock:
                results.append((outcome, time.monotonic() - started))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(results) == clients
    return results, max(deadlines)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_deadlines_against_a_slow_model(tmp_path: Path, batched: bool) -> None:
    """16 clients with a 0.2 s deadline against a model taking 0.5 s per run, twice.

    Every client gets DEADLINE_EXCEEDED; requests whose deadline passed while they waited
    (in the batcher's queue, or for a thread) are never run; the queue empties, and a request
    sent after each wave (queued behind anything the wave left) is answered right and is the
    only run after the wave's one.
    """
    serving = {"max_batch_size": 64 if batched else 0, "max_queue_delay_us": 500}
    path = _tiny_spec(tmp_path, "alpha", seed=1, serving=serving)
    want = reference.forward(load_spec(path), X64)
    server = ServerThread(
        Settings(repository=tmp_path, port=0, metrics_port=None, threads=1)
    ).start()
    timeout, clients = 0.2, 16
    waves: list[dict[str, Any]] = []
    answers: list[np.ndarray] = []
    try:
        assert server.running is not None
        version = server.running.registry.entries["alpha"].versions["1"]
        assert (version.batcher is not None) == batched
        slow = _slow_down(server, "alpha", 0.5)
        for _ in range(2):
            runs_before = slow.runs
            results, last_deadline = _wave(server.address, clients, timeout)
            wait_until(lambda: _settled(server), "queue empty, nothing in flight")
            # A probe queued behind whatever the wave left: it runs after any late run.
            slow.delay = 0.0
            with InferenceClient(server.address) as client:
                answers.append(client.infer("alpha", {"x": X64}, timeout=WAIT)["y"])
            slow.delay = 0.5
            wave_runs = slow.started[runs_before:-1]
            waves.append(
                {
                    "codes": Counter(code for code, _ in results),
                    "slowest_s": round(max(s for _, s in results), 3),
                    "runs": len(wave_runs),
                    # Runs that started after every client's deadline. Informational: the
                    # server's deadline starts when a request arrives, so it can be later.
                    "runs_after_deadlines": sum(t > last_deadline for t in wave_runs),
                }
            )
        stats = _statistics(server.address, "alpha")
        settled = _settled(server)
        total_runs = slow.runs
    finally:
        server.stop()
    print(
        f"\n(e) {'batched' if batched else 'unbatched'}: {waves}; session runs {total_runs} "
        f"(with one request after each wave), ModelStatistics execution_count "
        f"{stats.execution_count}"
    )
    for wave in waves:
        assert wave["codes"] == {"DEADLINE_EXCEEDED": clients}
    # One request per batch (batched) or one thread per instance (unbatched, instances 1):
    # only the request running at the deadline ran; those waiting were dropped, and none
    # ran late (the request after the wave would have waited behind it).
    assert [wave["runs"] for wave in waves] == [1, 1]
    for got in answers:
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert settled
    assert stats.inference_stats.success.count == len(answers) == 2
    assert stats.inference_stats.fail.count == 2 * clients
    assert stats.execution_count == total_runs  # runs whose client had left count too


def test_statistics_count_the_runs_of_requests_whose_client_left(tmp_path: Path) -> None:
    """An unbatched model's run whose request timed out still ran: ModelStatistics says so.

    (The unbatched path used to report a run only when its caller was still waiting.)
    """
    _tiny_spec(tmp_path, "alpha", serving={"max_batch_size": 0})
    server = ServerThread(
        Settings(repository=tmp_path, port=0, metrics_port=None, threads=1)
    ).start()
    try:
        slow = _slow_down(server, "alpha", 0.3)
        with InferenceClient(server.address) as client, pytest.raises(DeadlineExceeded) as error:
            client.infer("alpha", {"x": X64}, timeout=0.1)
        assert error.value.code == "DEADLINE_EXCEEDED"
        wait_until(lambda: _settled(server), "settled")
        # The run goes on after the client left; its end is counted once it is over.
        stats = wait_until(
            lambda: (found := _statistics(server.address, "alpha")).execution_count and found,
            "the run of the request whose client left counted",
        )
    finally:
        server.stop()
    print(f"\n(e) session runs {slow.runs}, execution_count {stats.execution_count}")
    assert slow.runs == 1
    assert stats.execution_count == 1
    assert stats.inference_stats.compute_infer.count == 1


def _default_executor_threads() -> int:
    """What asyncio's default executor holds: ThreadPoolExecutor's default size."""
    cpus = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    return min(32, cpus + 4)


def test_a_slow_model_does_not_hold_up_another_model(tmp_path: Path) -> None:
    """A slow unbatched model with a backlog; a request to another model is answered at once.

    Twice as many clients as asyncio's default executor has threads send to the slow model
    (0.5 s per run, 1.2 s deadlines); a request to a fast model sent meanwhile must not wait
    for that backlog. (Before per-model threads, every model ran on that one shared pool and
    the other model's request waited about a second.) The slow model's clients get their
    answer or DEADLINE_EXCEEDED, and its queue is dropped at the deadline.
    """
    _tiny_spec(tmp_path, "alpha", serving={"max_batch_size": 0})
    beta = _tiny_spec(tmp_path, "beta", seed=2)
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    want = reference.forward(load_spec(beta), x)
    server = ServerThread(
        Settings(repository=tmp_path, port=0, metrics_port=None, threads=1)
    ).start()
    backlog = 2 * _default_executor_threads() + 2
    codes: list[str] = []

    def slow_client() -> None:
        with InferenceClient(server.address) as client:
            try:
                client.infer("alpha", {"x": X64}, timeout=1.2)
                codes.append("OK")
            except InferenceServerError as error:
                codes.append(error.code)

    threads = [threading.Thread(target=slow_client) for _ in range(backlog)]
    try:
        assert server.running is not None
        drain = server.running.plane.drain
        slow = _slow_down(server, "alpha", 0.5)
        with InferenceClient(server.address) as client:
            client.infer("beta", {"x": x})  # connected and warm
            for thread in threads:
                thread.start()
            wait_until(lambda: drain.in_flight == backlog, "the backlog in flight")
            began = time.monotonic()
            got = client.infer("beta", {"x": x}, timeout=WAIT)["y"]
            waited = time.monotonic() - began
            runs_before_answer = slow.runs
        for thread in threads:
            thread.join(WAIT)
        wait_until(lambda: _settled(server), "settled")
    finally:
        server.stop()
    print(
        f"\n(e) {backlog} requests to a 0.5 s unbatched model ({slow.runs} runs, "
        f"{dict(Counter(codes))}): another model's request took {waited:.3f} s"
    )
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(codes) == backlog and set(codes) <= {"OK", "DEADLINE_EXCEEDED"}
    # Queued behind the backlog in a shared pool, the answer would come only after most of
    # the backlog ran; with a pool per model it comes while the first runs are still going.
    assert runs_before_answer < backlog // 2, (runs_before_answer, backlog)
