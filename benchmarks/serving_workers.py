"""The processes of ``serving.py`` other than the servers under test.

Each runs in a process of its own (``multiprocessing`` spawn), driven over a pipe:

- ``null_server_main``: the do-nothing ``grpc.aio`` server (the generated service);
  ``null_uvloop_main`` the same on uvloop, the loop ``onnxforge serve`` runs on;
- ``null_sync_main``: the do-nothing thread-pool ``grpc.server`` (bytes in, bytes out);
- ``client_main``: the load generator, one closed-loop cell per command (the harness's
  driver, ``onnxforge.bench.drive``, sending prebuilt request bytes);
- ``compute_main``: ONNX Runtime in-process, ``session.run`` one call after the other.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.bench import Load, drive

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MESSAGE_BYTES = 64 * 1024 * 1024
REQUEST_TIMEOUT_S = 30.0
MODELS = {"small": "small-mlp", "wide": "wide-mlp"}


def null_server_main(
    responses: dict[tuple[str, int], bytes], conn: Any, uvloop: bool = False
) -> None:
    """``grpc.aio`` with the generated service; ModelInfer answers a precomputed response
    (by model name and rows), with onnxforge's server options; on uvloop with ``uvloop``."""
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

    if uvloop:
        import uvloop as uv

        uv.run(run())
    else:
        asyncio.run(run())


def null_uvloop_main(responses: dict[tuple[str, int], bytes], conn: Any) -> None:
    """:func:`null_server_main` on uvloop."""
    null_server_main(responses, conn, uvloop=True)


def null_sync_main(responses: dict[bytes, bytes], conn: Any) -> None:
    """A thread-pool ``grpc.server`` answering precomputed response bytes, the cheapest
    Python gRPC server: no message is parsed; ``responses`` maps request bytes to answer
    bytes, and the answer is chosen by the request's size (every request of a run has a
    size of its own: model and rows)."""
    from concurrent import futures

    import grpc

    by_size = {len(request): answer for request, answer in responses.items()}

    def infer(request: bytes, context: Any) -> bytes:
        return by_size[len(request)]

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},  # bytes in, bytes out
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(8),
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES),
            ("grpc.max_send_message_length", MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    conn.poll(86400)
    server.stop(1)


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

    options = ort.SessionOptions()  # ONNX Runtime's defaults (spinning on) ...
    options.intra_op_num_threads = threads  # ... but the thread count (0: its own choice)
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
    """ONNX Runtime in-process: ``session.run`` in a process of its own, one call at a time."""
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
