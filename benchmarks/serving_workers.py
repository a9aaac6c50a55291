"""The processes of ``serving.py`` other than the servers under test.

Each runs in a process of its own (``multiprocessing`` spawn), driven over a pipe:

- ``null_server_main``: (b), the do-nothing gRPC server;
- ``client_main``: the load generator, one closed-loop cell per command (the harness's
  driver, ``onnxforge.bench.drive``, sending prebuilt request bytes);
- ``compute_main``: (a), ``session.run`` in-process with the server's session options;
- ``memory_probe``: what loading the repository with the server's ``Registry`` leaves resident.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.bench import Load, drive, process_status

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MESSAGE_BYTES = 64 * 1024 * 1024
REQUEST_TIMEOUT_S = 30.0
MODELS = {"small": "digits-mlp", "wide": "wide-mlp"}


def null_server_main(responses: dict[tuple[str, int], bytes], conn: Any) -> None:
    """(b): the same generated service; ModelInfer answers a precomputed response."""
    import grpc

    from onnxforge.protocol.generated import inference_pb2 as pb
    from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc

    answers = {key: pb.ModelInferResponse.FromString(data) for key, data in responses.items()}

    class Null(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            return answers[(request.model_name, request.inputs[0].shape[0])]

    async def run() -> None:
        # The options onnxforge's create_server sets.
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MESSAGE_BYTES),
                ("grpc.max_send_message_length", MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", 256),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Null(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        loop = asyncio.get_running_loop()
        # Stop when told (or when the parent is gone), at most a day later.
        await loop.run_in_executor(None, conn.poll, 86400)
        await server.stop(1)

    asyncio.run(run())


class _Channels:
    """One channel per server port, kept across cells; calls send and return raw bytes."""

    def __init__(self) -> None:
        self.open: dict[int, Any] = {}

    async def call_for(self, port: int) -> Any:
        import grpc

        if port not in self.open:
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}",
                options=[
                    ("grpc.max_receive_message_length", MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MESSAGE_BYTES),
                ],
            )
            await asyncio.wait_for(channel.channel_ready(), 30)
            # No serializers: the prebuilt request bytes go out as they are, answers stay bytes.
            self.open[port] = (channel, channel.unary_unary(METHOD))
        return self.open[port][1]

    async def close(self) -> None:
        for channel, _ in self.open.values():
            await channel.close()


async def _cell(
    channels: _Channels,
    port: int,
    payload: bytes,
    concurrency: int,
    start: float,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """One closed-loop cell: ``concurrency`` coroutines sending ``payload`` from ``start``."""
    call = await channels.call_for(port)

    async def send(worker: int, index: int) -> object:
        return await call(payload, timeout=REQUEST_TIMEOUT_S)

    load = Load(concurrency, duration=duration, warmup=warmup, start_at=start, error_pause=0.001)
    outcome = await drive(send, load)
    return {
        "latencies": outcome.latencies,
        "errors": outcome.errors,
        "first_error": outcome.first_error,
        "cpu_s": outcome.cpu_seconds,
    }


def client_main(conn: Any) -> None:
    """A load generator process: runs one closed-loop cell per command, keeps its channels."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    channels = _Channels()
    while conn.poll(3600):
        message = conn.recv()
        if message[0] == "stop":
            break
        conn.send(loop.run_until_complete(_cell(channels, *message[1:])))
    loop.run_until_complete(channels.close())
    loop.close()


def _session(repo: str, model: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()  # exactly what the server's registry sets
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    path = str(Path(repo) / model / "1" / "model.onnx")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _time_runs(
    session: Any, rows: np.ndarray, start: float, warmup: float, duration: float
) -> dict[str, Any]:
    """``session.run`` one call after the other; latencies of those ending in the window."""
    feed = {"x": rows}
    measure_from, until = start + warmup, start + warmup + duration
    latencies = []
    time.sleep(max(0.0, start - time.monotonic()))
    while True:
        began = time.monotonic()
        if began >= until:
            break
        session.run(None, feed)
        ended = time.monotonic()
        if ended >= measure_from:
            latencies.append(ended - began)
    return {"latencies": np.asarray(latencies), "errors": 0, "cpu_s": 0.0}


def compute_main(repo: str, conn: Any) -> None:
    """(a): ``session.run`` in a process of its own, with the server's session options."""
    sessions: dict[tuple[str, int], Any] = {}

    def session(model: str, threads: int) -> Any:
        if (model, threads) not in sessions:
            sessions[(model, threads)] = _session(repo, model, threads)
        return sessions[(model, threads)]

    while conn.poll(3600):
        message = conn.recv()
        if message[0] == "stop":
            break
        if message[0] == "outputs":
            _, model, rows = message
            one = session(model, 1)
            names = [o.name for o in one.get_outputs()]
            conn.send(dict(zip(names, one.run(names, {"x": rows}), strict=True)))
            continue
        _, model, threads, rows, start, warmup, duration = message
        conn.send(_time_runs(session(model, threads), rows, start, warmup, duration))


def _rss_mib() -> float:
    return process_status(os.getpid()).get("VmRSS", 0) / 1024


def memory_probe(repo: str, threads: int, sessions: bool, conn: Any) -> None:
    """What the server's model loading leaves resident, measured in a fresh process.

    Loads the repository with the server's own ``Registry`` (as ``onnxforge serve`` does), then
    asks glibc to return freed heap pages (``malloc_trim``): what remains is what the sessions
    hold. Then runs 64-row batches and two more sessions of the wide model, to show the cost
    of a session (once per loaded model, not per request or batch).
    """
    import ctypes
    import gc

    from onnxforge.server.registry import Registry

    trim = ctypes.CDLL("libc.so.6").malloc_trim
    out = {"imports_mib": _rss_mib()}
    registry = Registry(Path(repo), threads=threads, build_missing=False)
    asyncio.run(registry.load_all())
    out["loaded_mib"] = _rss_mib()
    gc.collect()
    trim(0)
    out["loaded_after_malloc_trim_mib"] = _rss_mib()
    if sessions:
        for name in MODELS.values():
            version = registry.get(name)
            width = version.inputs["x"].shape[1]
            rows = np.ones((64, width), np.float32)
            for _ in range(50):
                version.run({"x": rows}, list(version.outputs))
        out["after_runs_mib"] = _rss_mib()
        extra = []
        for _ in range(2):
            extra.append(_session(repo, MODELS["wide"], threads))
            gc.collect()
            trim(0)
        out["two_more_wide_sessions_mib"] = _rss_mib()
    conn.send({key: round(value, 1) for key, value in out.items()})
