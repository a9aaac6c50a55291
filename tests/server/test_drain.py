"""SIGTERM under closed-loop load: every request gets its full answer or UNAVAILABLE.

A real ``onnxforge serve`` process (one process, and ``--workers 2``), 32 unary clients
each sending ModelInfer back to back on a connection of its own, 4 streams sending one
request after the other, and one stream that waits after its first answer. SIGTERM is
sent once every client has had an answer. Every request's outcome is then classified:
an OK answer is held to the NumPy reference; a failure must be UNAVAILABLE from the
draining server (no CANCELLED, no other status, no transport error). The server's final
line ("stopped: N answered during the drain, M refused UNAVAILABLE, K cut off") must agree
with what the clients saw.
"""

from __future__ import annotations

import asyncio
import queue
import re
import shutil
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxforge.builder import load_spec, reference
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from tests.conftest import MODELS
from tests.server.processes import ServeProcess
from tests.server.requests import output, raw_request

CLIENTS = 32  # unary clients, closed loop
STREAMS = 4  # streams, closed loop
WAIT = 60.0  # seconds: the bound on every wait (never reached when the server works)
REFUSAL = "server unavailable: the server is shutting down"
STOPPED = re.compile(
    r"stopped: (\d+) answered during the drain, (\d+) refused UNAVAILABLE, (\d+) cut off"
)
# A connection per client (gRPC would share one between channels to the same address):
# with --workers, the kernel spreads the connections over the workers.
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Outcomes:
    """Every request's outcome, as the clients saw it."""

    answered: int = 0  # OK and equal to the reference
    wrong: int = 0  # OK but not the reference's answer
    after_signal: int = 0  # OK answers received after SIGTERM was sent
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)  # (code, details)
    signalled: bool = False
    first: asyncio.Event = field(default_factory=asyncio.Event)  # every client answered once
    waiting: int = CLIENTS + STREAMS + 1  # clients without an answer yet

    def ok(self, right: bool) -> None:
        self.answered += right
        self.wrong += not right
        self.after_signal += self.signalled

    def answered_once(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.first.set()


def _fp32_repository(tmp_path: Path) -> Path:
    """The bundled digits model with its fp32 variant only (quick to build)."""
    folder = tmp_path / "digits-mlp"
    folder.mkdir()
    shutil.copy(MODELS / "digits-mlp" / "weights.npz", folder / "weights.npz")
    text = (MODELS / "digits-mlp" / "spec.yaml").read_text()
    text = re.sub(r"^variants: .*$", "variants: [fp32]", text, flags=re.M)
    (folder / "spec.yaml").write_text(text)
    return folder / "spec.yaml"


async def _drive(server: ServeProcess, spec_path: Path) -> Outcomes:
    spec = load_spec(spec_path)
    url = server.url
    rng = np.random.default_rng(7)
    pool = [rng.uniform(size=(8, 64)).astype(np.float32) for _ in range(8)]
    wanted = [reference.forward(spec, x) for x in pool]
    seen = Outcomes()

    def right(response: pb.ModelInferResponse, index: int) -> bool:
        got = output(response, "probabilities")
        return bool(np.allclose(got, wanted[index], atol=1e-5, rtol=0))

    async def unary(number: int) -> None:
        async with grpc.aio.insecure_channel(url, options=OPTIONS) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for attempt in range(1_000_000):
                index = (number + attempt) % len(pool)
                try:
                    response = await stub.ModelInfer(
                        raw_request("digits-mlp", pool[index]), timeout=WAIT
                    )
                except grpc.aio.AioRpcError as error:
                    seen.failures[error.code().name, error.details() or ""] += 1
                    return  # a closed-loop client stops at its refusal
                seen.ok(right(response, index))
                if attempt == 0:
                    seen.answered_once()

    def stream(number: int, idle: bool, loop: asyncio.AbstractEventLoop) -> tuple[str, str]:
        # gRPC's blocking API, as tritonclient streams: the final status is the server's.
        # (grpc.aio reports a write that races the end of a stream as its own INTERNAL.)
        turns: queue.Queue[int | None] = queue.Queue()

        def requests() -> Iterator[pb.ModelInferRequest]:
            while (attempt := turns.get()) is not None:
                index = (number + attempt) % len(pool)
                yield raw_request("digits-mlp", pool[index], id=str(attempt))

        turns.put(0)
        with grpc.insecure_channel(url, options=OPTIONS) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                requests(), timeout=WAIT
            )
            try:
                for attempt, reply in enumerate(call):
                    assert not reply.error_message, reply.error_message
                    assert reply.infer_response.id == str(attempt)
                    index = (number + attempt) % len(pool)
                    loop.call_soon_threadsafe(seen.ok, right(reply.infer_response, index))
                    if attempt == 0:
                        loop.call_soon_threadsafe(seen.answered_once)
                    if not idle:  # the next request; the idle stream waits for the drain
                        turns.put(attempt + 1)
            except grpc.RpcError:
                pass  # the stream ended: its status says how
            finally:
                turns.put(None)
            return call.code().name, call.details() or ""

    async def streams() -> None:
        loop = asyncio.get_running_loop()
        ends = await asyncio.gather(
            *(asyncio.to_thread(stream, n, n == STREAMS, loop) for n in range(STREAMS + 1))
        )
        seen.failures.update(ends)

    async def terminate() -> None:
        await asyncio.wait_for(seen.first.wait(), WAIT)
        seen.signalled = True
        server.process.send_signal(signal.SIGTERM)

    await asyncio.wait_for(
        asyncio.gather(
            terminate(),
            *(unary(n) for n in range(CLIENTS)),
            streams(),
        ),
        timeout=2 * WAIT,
    )
    return seen


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_every_request_in_full_or_unavailable(tmp_path: Path, workers: int) -> None:
    spec_path = _fp32_repository(tmp_path)
    if workers == 1:
        server = ServeProcess(tmp_path)
    else:
        server = ServeProcess(
            tmp_path,
            "--workers",
            str(workers),
            pattern=rf"serving with {workers} workers on 127\.0\.0\.1:(\d+)",
        )
    try:
        seen = asyncio.run(_drive(server, spec_path))
        code = server.process.wait(WAIT)
        server.closed.wait(WAIT)
    finally:
        server.close()
    log = "".join(server.lines)
    stops = [tuple(map(int, found)) for found in STOPPED.findall(log)]
    print(
        f"\nworkers={workers}: {seen.answered} answered ({seen.after_signal} after SIGTERM), "
        f"failures {dict(seen.failures)}; server: {stops}"
    )
    assert code == 0, log
    assert len(stops) == workers, log
    # Every answer is the reference's; every failure is the draining server's UNAVAILABLE:
    # one per unary client (each stops at its refusal) and one per stream (ended by the drain).
    assert seen.wrong == 0
    assert seen.failures == {("UNAVAILABLE", REFUSAL): CLIENTS + STREAMS + 1}, log
    answered, refused, cut_off = (sum(stop[i] for stop in stops) for i in range(3))
    assert refused == CLIENTS + STREAMS + 1, log
    assert cut_off == 0, log
    assert 0 <= answered <= seen.after_signal, log
    if workers == 1:
        assert STOPPED.search(log.splitlines()[-1]), log  # the final line says it all
    else:
        assert "stopped 2 workers (exit codes [0, 0])" in log.splitlines()[-1], log
        # The connections were spread: each worker drained and refused its own clients.
        assert all(stop[1] > 0 for stop in stops), log


def test_in_flight_ns_integrates_the_calls_in_flight_over_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two readings of ``Drain.in_flight_ns`` give the mean number of calls in flight
    between them (what ``serve --ray --max-replicas`` scales by); on a clock of our own."""
    from onnxforge.server import drain as drain_module

    clock = [1_000]
    monkeypatch.setattr(drain_module.time, "monotonic_ns", lambda: clock[0])
    drain = drain_module.Drain()
    start = drain.in_flight_ns()
    drain.enter()  # one call for 100 ns, then two for 50, then one for 50, then none for 800
    clock[0] += 100
    drain.enter()
    clock[0] += 50
    drain.leave(answered=True)
    clock[0] += 50
    drain.leave(answered=True)
    clock[0] += 800
    end = drain.in_flight_ns()
    assert end[1] - start[1] == 1_000
    assert end[0] - start[0] == 100 + 2 * 50 + 50  # calls x ns
    assert (end[0] - start[0]) / (end[1] - start[1]) == pytest.approx(0.25)
