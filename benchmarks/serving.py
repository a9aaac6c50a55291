"""Serving throughput and latency, side by side with the compute and framework ceilings.

    python benchmarks/serving.py            # the committed run, about 4 minutes on 2 cores
    python benchmarks/serving.py --quick    # a smoke run, about 40 seconds

Measures, in one run on one machine:

(a) ONNX Runtime in-process: ``session.run`` on the same model files, batch 1 and 64, with
    the server's session options (the compute ceiling);
(b) a do-nothing gRPC server: ``grpc.aio`` with the same generated service, whose
    ``ModelInfer`` answers a precomputed response of the real answer's size (the framework
    ceiling);
(c) ``onnxforge serve`` with dynamic batching off and on,

for the small (``digits-mlp``) and the wide (``wide-mlp``) example, at several concurrencies
with 1-row requests and with 64-row requests. Every server and the load generator run in
processes of their own (no shared GIL). The load generator is closed-loop asyncio
(``grpc.aio``) in one process of its own (``--two-clients-from`` splits it in two), sending
prebuilt request bytes and not decoding answers. The machine may be shared and noisy: every cell
runs once per round, in an order shuffled afresh each round, so drift hits all alike, and
before each cell the script waits (bounded) for the other processes on the machine to go
quiet; the CPU they used during each cell is recorded, and a cell during which they used more
than ``--max-others`` cores is measured again (bounded), keeping the quietest attempt.

Memory: the resident set (VmRSS) of a server with an empty repository, with the two fp32
models, and with the bundled ``models/`` (all variants), beside the sizes of the model
files; what a fresh process holds after loading the repository with the server's own
``Registry``, before and after ``malloc_trim``, and what one more session of the wide model
costs; and the RSS of each server after every cell, every round and a final stretch of
sustained load, to show it does not grow with load, concurrency or batch size.

Writes a JSON file and a PNG and prints tables, including the targets with met/missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"small": "digits-mlp", "wide": "wide-mlp"}
CONFIGS = ("null", "off", "on")  # (b), onnxforge batching off, onnxforge batching on
LABELS = {
    "ort": "(a) ONNX Runtime in-process",
    "null": "(b) do-nothing gRPC server",
    "off": "onnxforge, batching off",
    "on": "onnxforge, batching on",
}
METHOD = "/inference.GRPCInferenceService/ModelInfer"
MESSAGE_BYTES = 64 * 1024 * 1024
REQUEST_TIMEOUT_S = 30.0
INPUT_SEED = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 40 s)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument(
        "--duration", type=float, help="measured seconds per cell and round (default 1; quick 0.4)"
    )
    parser.add_argument(
        "--warmup", type=float, help="unmeasured seconds per cell (default 0.25; quick 0.15)"
    )
    parser.add_argument(
        "--concurrency", type=_int_list, help="1-row concurrencies (default 1,8,32,128; quick 1,32)"
    )
    parser.add_argument(
        "--rows64-concurrency",
        type=_int_list,
        help="concurrencies for 64-row requests (default 1,8; quick 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime intra-op threads of the server sessions and of (a) (default 1)",
    )
    parser.add_argument(
        "--two-clients-from",
        type=int,
        default=0,
        help="concurrency from which the load comes from 2 client processes instead of 1 "
        "(default 0: always 1; on 2 cores a second client process took CPU from the server "
        "and lowered every rate measured)",
    )
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="before a cell, wait until other processes use fewer cores than this (default 0.25)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="total seconds a run may spend waiting for quiet (default 15, quick 5; at most 3 s "
        "per cell)",
    )
    parser.add_argument(
        "--sustain",
        type=float,
        help="seconds of extra load on the onnxforge servers after the rounds, sampling their "
        "RSS (default 16; quick 0)",
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.3,
        help="re-run a cell when other processes used more cores than this during it (default 0.3)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="re-runs of a noisy cell at most (default 2)"
    )
    parser.add_argument(
        "--retry-budget",
        type=float,
        help="total seconds of re-runs per run (default 15, quick 5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the order within rounds")
    parser.add_argument("--json", type=Path, default=here / "serving.json")
    parser.add_argument("--plot", type=Path, default=here / "serving.png", help="'' for none")
    args = parser.parse_args(argv)
    defaults = (
        (1, 0.4, 0.15, [1, 32], [1], 5.0, 5.0, 0.0)
        if args.quick
        else (3, 1.0, 0.25, [1, 8, 32, 128], [1, 8], 15.0, 15.0, 16.0)
    )
    names = ("rounds", "duration", "warmup", "concurrency", "rows64_concurrency")
    names += ("quiet_wait", "retry_budget", "sustain")
    for name, value in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if str(args.plot) in ("", "."):
        args.plot = None
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.threads < 0:
        parser.error("--rounds >= 1, --duration > 0, --warmup >= 0, --threads >= 0")
    if args.rounds * args.duration > 120:
        parser.error("rounds x duration is over 120 s per cell; keep runs bounded")
    return args


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if not values or min(values) < 1 or max(values) > 1024:
        raise argparse.ArgumentTypeError(f"expected integers 1..1024, got {text!r}")
    return values


# ----------------------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (kB) and Threads of a process."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """CPU seconds all CPUs of this machine have spent in processes, and in interrupts.

    Interrupt time (mostly softirq: loopback TCP of our own requests) is kept apart: the
    kernel charges it to no process, so it would otherwise count as someone else's load.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]
    return (user + nice + system) / CLK_TCK, (irq + softirq) / CLK_TCK


def wait_quiet(limit_cores: float, max_wait: float) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until the machine's busy cores drop below the limit.

    Our own servers are idle between cells, so what is busy then is someone else.
    Returns (seconds waited, busy cores in the last 0.1 s sample).
    """
    began = time.monotonic()
    while True:
        before, t0 = machine_busy()[0], time.monotonic()
        time.sleep(0.1)
        cores = (machine_busy()[0] - before) / (time.monotonic() - t0)
        waited = time.monotonic() - began
        if cores < limit_cores or waited >= max_wait:
            return waited, cores


# ----------------------------------------------------------------------------- processes


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


def client_main(conn: Any) -> None:
    """A load generator process: runs one closed-loop cell per command, keeps its channels."""
    import grpc

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    channels: dict[int, Any] = {}

    async def call_for(port: int) -> Any:
        if port not in channels:
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}",
                options=[
                    ("grpc.max_receive_message_length", MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MESSAGE_BYTES),
                ],
            )
            await asyncio.wait_for(channel.channel_ready(), 30)
            # No serializers: the prebuilt request bytes go out as they are, answers stay bytes.
            channels[port] = (channel, channel.unary_unary(METHOD))
        return channels[port][1]

    async def cell(
        port: int, payload: bytes, concurrency: int, start: float, warmup: float, duration: float
    ) -> dict[str, Any]:
        call = await call_for(port)
        measure_from, until = start + warmup, start + warmup + duration
        latencies: list[float] = []
        errors: list[str] = []
        cpu: dict[str, float] = {}
        loop.call_at(measure_from, lambda: cpu.__setitem__("from", time.process_time()))
        loop.call_at(until, lambda: cpu.__setitem__("until", time.process_time()))

        async def worker() -> None:
            while True:
                began = time.monotonic()
                if began >= until:
                    return
                try:
                    await call(payload, timeout=REQUEST_TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    if measure_from <= time.monotonic() < until:
                        errors.append(f"{error.code().name}: {error.details()}")
                    await asyncio.sleep(0.001)
                    continue
                ended = time.monotonic()
                if measure_from <= ended < until:
                    latencies.append(ended - began)

        await asyncio.sleep(max(0.0, start - time.monotonic()))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {
            "latencies": np.asarray(latencies, dtype=np.float64),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "cpu_s": cpu.get("until", time.process_time()) - cpu.get("from", 0.0),
        }

    while conn.poll(3600):
        message = conn.recv()
        if message[0] == "stop":
            break
        conn.send(loop.run_until_complete(cell(*message[1:])))
    for channel, _ in channels.values():
        loop.run_until_complete(channel.close())
    loop.close()


def compute_main(repo: str, conn: Any) -> None:
    """(a): ``session.run`` in a process of its own, with the server's session options."""
    import onnxruntime as ort

    sessions: dict[tuple[str, int], Any] = {}

    def session(model: str, threads: int) -> Any:
        if (model, threads) not in sessions:
            options = ort.SessionOptions()  # exactly what server.registry sets
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            sessions[(model, threads)] = ort.InferenceSession(
                str(Path(repo) / model / "1" / "model.onnx"),
                options,
                providers=["CPUExecutionProvider"],
            )
        return sessions[(model, threads)]

    while conn.poll(3600):
        message = conn.recv()
        if message[0] == "stop":
            break
        if message[0] == "outputs":
            _, model, rows = message
            sess = session(model, 1)
            names = [o.name for o in sess.get_outputs()]
            conn.send(dict(zip(names, sess.run(names, {"x": rows}), strict=True)))
            continue
        _, model, threads, rows, start, warmup, duration = message
        sess = session(model, threads)
        feed = {"x": rows}
        measure_from, until = start + warmup, start + warmup + duration
        latencies = []
        time.sleep(max(0.0, start - time.monotonic()))
        while True:
            began = time.monotonic()
            if began >= until:
                break
            sess.run(None, feed)
            ended = time.monotonic()
            if ended >= measure_from:
                latencies.append(ended - began)
        conn.send({"latencies": np.asarray(latencies), "errors": 0, "cpu_s": 0.0})


def memory_probe(repo: str, threads: int, conn: Any, sessions: bool = True) -> None:
    """What the server's model loading leaves resident, measured in a fresh process.

    Loads the repository with the server's own ``Registry`` (as ``onnxforge serve`` does), then
    asks glibc to return freed heap pages (``malloc_trim``): what remains is what the sessions
    hold. Then runs 64-row batches and two more sessions of the wide model, to show the cost
    of a session (once per loaded model, not per request or batch).
    """
    import ctypes
    import gc

    import onnxruntime as ort

    from onnxforge.server.registry import Registry

    def rss() -> float:
        return proc_status(os.getpid()).get("VmRSS", 0) / 1024

    trim = ctypes.CDLL("libc.so.6").malloc_trim
    out = {"imports_mib": rss()}
    registry = Registry(Path(repo), threads=threads, build_missing=False)
    asyncio.run(registry.load_all())
    out["loaded_mib"] = rss()
    gc.collect()
    trim(0)
    out["loaded_after_malloc_trim_mib"] = rss()
    if not sessions:
        conn.send({key: round(value, 1) for key, value in out.items()})
        return
    for name in MODELS.values():
        version = registry.get(name)
        width = version.inputs["x"].shape[1]
        rows = np.ones((64, width), np.float32)
        for _ in range(50):
            version.run({"x": rows}, list(version.outputs))
    out["after_runs_mib"] = rss()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    path = str(Path(repo) / MODELS["wide"] / "1" / "model.onnx")
    extra = []
    for _ in range(2):
        extra.append(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]))
        gc.collect()
        trim(0)
    out["two_more_wide_sessions_mib"] = rss()
    conn.send({key: round(value, 1) for key, value in out.items()})


@dataclass
class Server:
    """One server process under test."""

    config: str
    pid: int
    port: int
    handle: Any  # subprocess.Popen or multiprocessing.Process
    conn: Any = None
    log: Path | None = None
    channel: Any = None  # for ModelStatistics (onnxforge only)

    def runs(self, model: str) -> tuple[int, int]:
        """(session runs, rows) the server has counted for ``model`` so far."""
        if self.config not in ("on", "off"):
            return 0, 0
        import grpc

        from onnxforge.protocol.generated import inference_pb2 as pb

        if self.channel is None:
            self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        call = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelStatistics",
            request_serializer=pb.ModelStatisticsRequest.SerializeToString,
            response_deserializer=pb.ModelStatisticsResponse.FromString,
        )
        stats = call(pb.ModelStatisticsRequest(name=model), timeout=10).model_stats[0]
        return stats.execution_count, stats.inference_count


def start_onnxforge(
    repo: Path, config: str, threads: int, logs: Path, extra: tuple[str, ...] = ()
) -> Server:
    """``python -m onnxforge serve`` as a process of its own; waits until it serves."""
    log = logs / f"serve-{config}.log"
    command = [
        sys.executable,
        "-m",
        "onnxforge",
        "serve",
        str(repo),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--no-build",
        "--threads",
        str(threads),
        "--log-level",
        "info",
        *(["--no-batching"] if config == "off" else []),
        *extra,
    ]
    with log.open("wb") as out:
        handle = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    pattern = re.compile(r"serving \d+ model\(s\) from .* on [\d.]+:(\d+)")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return Server(config, handle.pid, int(found.group(1)), handle, log=log)
        if handle.poll() is not None:
            break
        time.sleep(0.05)
    handle.kill()
    raise RuntimeError(f"onnxforge serve ({config}) did not start:\n{log.read_text()[-2000:]}")


def stop(server: Server) -> None:
    if server.channel is not None:
        server.channel.close()
    if isinstance(server.handle, subprocess.Popen):
        server.handle.terminate()
        try:
            server.handle.wait(20)
        except subprocess.TimeoutExpired:
            server.handle.kill()
            server.handle.wait(5)
    else:
        with contextlib.suppress(OSError):
            server.conn.send("stop")
        server.handle.join(10)
        if server.handle.is_alive():
            server.handle.kill()
            server.handle.join(5)


def settle_rss(pid: int, seconds: float = 0.5) -> dict[str, int]:
    time.sleep(seconds)
    return proc_status(pid)


# ----------------------------------------------------------------------------- cells


@dataclass
class Cell:
    config: str  # ort | null | off | on
    model: str  # small | wide
    rows: int
    concurrency: int  # client coroutines; for "ort": 1 (one call at a time)
    threads: int = 0  # for "ort": intra-op threads
    latencies: list[np.ndarray] = field(default_factory=list)
    per_round_rps: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    others_cpu_s: float = 0.0
    irq_s: float = 0.0
    session_runs: int = 0
    session_rows: int = 0
    discarded: int = 0  # attempts thrown away because other processes were busy
    client_processes: int = 1
    rss_kb_after: list[int] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        return (self.config, self.model, self.rows, self.concurrency, self.threads)


def make_cells(args: argparse.Namespace) -> list[Cell]:
    cells = []
    for model in MODELS:
        # (a) with the server's thread count, and with 2 threads for comparison.
        extra = set() if args.quick else {2}
        for threads in sorted({args.threads, *extra} - {0}) or [args.threads]:
            for rows in (1, 64):
                cells.append(Cell("ort", model, rows, 1, threads))
        for config in CONFIGS:
            cells += [Cell(config, model, 1, c) for c in args.concurrency]
            cells += [Cell(config, model, 64, c) for c in args.rows64_concurrency]
    return cells


def run_cell(
    cell: Cell,
    servers: dict[str, Server],
    clients: list[Any],
    compute: Any,
    compute_pid: int,
    payloads: dict[tuple[str, int], bytes],
    inputs: dict[tuple[str, int], np.ndarray],
    args: argparse.Namespace,
) -> Attempt:
    name = MODELS[cell.model]
    server_before = servers[cell.config].runs(name) if cell.config != "ort" else (0, 0)
    start = time.monotonic() + 0.05
    window = (start + args.warmup, start + args.warmup + args.duration)
    if cell.config == "ort":
        compute.send(
            ("run", name, cell.threads, inputs[(cell.model, cell.rows)], start, args.warmup,
             args.duration)
        )  # fmt: skip
        used = [compute]
    else:
        server = servers[cell.config]
        n = 2 if 0 < args.two_clients_from <= cell.concurrency else 1
        cell.client_processes = n
        shares = [cell.concurrency // n + (i < cell.concurrency % n) for i in range(n)]
        used = []
        for conn, share in zip(clients, shares, strict=False):
            if share:
                conn.send(
                    ("cell", server.port, payloads[(cell.model, cell.rows)], share, start,
                     args.warmup, args.duration)
                )  # fmt: skip
                used.append(conn)
    pid = compute_pid if cell.config == "ort" else servers[cell.config].pid
    time.sleep(max(0.0, window[0] - time.monotonic()))
    (busy0, irq0), cpu0 = machine_busy(), proc_cpu(pid)
    time.sleep(max(0.0, window[1] - time.monotonic()))
    (busy1, irq1), cpu1 = machine_busy(), proc_cpu(pid)
    results = []
    for conn in used:
        if not conn.poll(args.warmup + args.duration + REQUEST_TIMEOUT_S + 30):
            raise RuntimeError(f"no answer from a load process for {cell.key}")
        results.append(conn.recv())
    client_cpu = sum(r["cpu_s"] for r in results)
    server_after = servers[cell.config].runs(name) if cell.config != "ort" else (0, 0)
    return Attempt(
        session_runs=server_after[0] - server_before[0],
        session_rows=server_after[1] - server_before[1],
        latencies=np.concatenate([r["latencies"] for r in results]),
        errors=sum(r["errors"] for r in results),
        first_error=next((r["first_error"] for r in results if r.get("first_error")), None),
        server_cpu_s=cpu1 - cpu0,
        client_cpu_s=client_cpu,
        others_cpu_s=max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - client_cpu),
        irq_s=irq1 - irq0,
        rss_kb=proc_status(pid).get("VmRSS", 0) if cell.config != "ort" else 0,
    )


@dataclass
class Attempt:
    """One measurement of one cell."""

    latencies: np.ndarray
    errors: int
    first_error: str | None
    server_cpu_s: float
    client_cpu_s: float
    others_cpu_s: float
    irq_s: float
    rss_kb: int
    session_runs: int = 0  # counted by the server (ModelStatistics), warm-up included
    session_rows: int = 0


def add(cell: Cell, attempt: Attempt, duration: float) -> None:
    cell.latencies.append(attempt.latencies)
    cell.per_round_rps.append(len(attempt.latencies) / duration)
    cell.seconds += duration
    cell.errors += attempt.errors
    cell.first_error = cell.first_error or attempt.first_error
    cell.server_cpu_s += attempt.server_cpu_s
    cell.client_cpu_s += attempt.client_cpu_s
    cell.others_cpu_s += attempt.others_cpu_s
    cell.irq_s += attempt.irq_s
    cell.session_runs += attempt.session_runs
    cell.session_rows += attempt.session_rows
    if cell.config != "ort":
        cell.rss_kb_after.append(attempt.rss_kb)


def summarize(cell: Cell) -> dict[str, Any]:
    latencies = np.concatenate(cell.latencies) if cell.latencies else np.zeros(0)
    ms = latencies * 1e3 if len(latencies) else np.asarray([np.nan])
    requests = len(latencies)
    rps = requests / cell.seconds if cell.seconds else 0.0
    out: dict[str, Any] = {
        "config": cell.config,
        "label": LABELS[cell.config],
        "model": cell.model,
        "model_name": MODELS[cell.model],
        "rows": cell.rows,
        "concurrency": cell.concurrency,
    }
    if cell.config == "ort":
        out["threads"] = cell.threads
    out |= {
        "requests": requests,
        "errors": cell.errors,
        "seconds": round(cell.seconds, 3),
        "requests_per_s": round(rps, 1),
        "rows_per_s": round(rps * cell.rows, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "per_round_requests_per_s": [round(v, 1) for v in cell.per_round_rps],
        "others_cores": round(cell.others_cpu_s / cell.seconds, 2) if cell.seconds else None,
        "interrupt_cores": round(cell.irq_s / cell.seconds, 2) if cell.seconds else None,
        "discarded_noisy_attempts": cell.discarded,
    }
    if cell.config != "ort":
        out |= {
            "client_processes": cell.client_processes,
            "server_cpu_us_per_request": round(1e6 * cell.server_cpu_s / requests, 1)
            if requests
            else None,
            "client_cpu_us_per_request": round(1e6 * cell.client_cpu_s / requests, 1)
            if requests
            else None,
            "server_cores": round(cell.server_cpu_s / cell.seconds, 2),
            "client_cores": round(cell.client_cpu_s / cell.seconds, 2),
            "server_rss_mib_after": [round(kb / 1024, 1) for kb in cell.rss_kb_after],
        }
        if cell.session_runs:
            out["rows_per_session_run"] = round(cell.session_rows / cell.session_runs, 2)
        if cell.first_error:
            out["first_error"] = cell.first_error
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    spawn = multiprocessing.get_context("spawn")
    processes: list[Any] = []
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="onnxforge-serving-") as scratch:
        folder = Path(scratch)
        repo = folder / "repo"
        try:
            report = _run(args, folder, repo, spawn, processes, servers)
        finally:
            for server in servers.values():
                stop(server)
            for conn, process in processes:
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join(5)
    report["settings"]["elapsed_s"] = round(time.monotonic() - began, 1)
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}", file=sys.stderr)
    if args.plot is not None:
        plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _run(
    args: argparse.Namespace,
    folder: Path,
    repo: Path,
    spawn: Any,
    processes: list[Any],
    servers: dict[str, Server],
) -> dict[str, Any]:
    from onnxforge.builder.samples import sample_inputs
    from onnxforge.builder.spec import load_spec
    from onnxforge.client import infer_request
    from onnxforge.protocol.generated import inference_pb2 as pb

    def log(text: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {text}", file=sys.stderr, flush=True)

    t0 = time.monotonic()
    specs = {key: ROOT / "models" / name / "spec.yaml" for key, name in MODELS.items()}
    build = subprocess.run(
        [sys.executable, "-m", "onnxforge", "build", *map(str, specs.values()), "--variants",
         "fp32", "--repository", str(repo), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if build.returncode != 0:
        raise RuntimeError(f"onnxforge build failed:\n{build.stderr[-2000:]}")
    log(f"built {', '.join(MODELS.values())} (fp32) into {repo}")

    # Memory of a server with no model, and with the bundled repository (every variant).
    memory: dict[str, Any] = {}
    empty = folder / "empty"
    empty.mkdir()
    bundled = ROOT / "models"
    for label, where in (("empty_repository", empty), ("bundled_models", bundled)):
        server = start_onnxforge(where, f"memory-{label}", args.threads, folder)
        status = settle_rss(server.pid, 1.0)
        stop(server)
        files = sorted(where.glob("*/[0-9]*/model.onnx"))
        memory[label] = {
            "repository": str(where.relative_to(ROOT)) if where == bundled else "(empty)",
            "models": [f.parent.parent.name for f in files],
            "model_file_bytes": sum(f.stat().st_size for f in files),
            "rss_mib": round(status.get("VmRSS", 0) / 1024, 1),
            "peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
            "threads": status.get("Threads"),
        }
        log(f"RSS with {label.replace('_', ' ')}: {memory[label]['rss_mib']} MiB")

    for key, where, sessions in (("probe", repo, True), ("probe_bundled", bundled, False)):
        parent, child = spawn.Pipe()
        probe = spawn.Process(target=memory_probe, args=(str(where), args.threads, child, sessions))
        probe.start()
        if not parent.poll(120):
            probe.kill()
            raise RuntimeError("the memory probe did not answer")
        memory[key] = parent.recv()
        probe.join(10)
    wide_mib = (repo / MODELS["wide"] / "1" / "model.onnx").stat().st_size / 2**20
    memory["probe"]["wide_file_mib"] = round(wide_mib, 1)
    memory["probe"]["per_extra_wide_session_mib"] = round(
        (memory["probe"]["two_more_wide_sessions_mib"] - memory["probe"]["after_runs_mib"]) / 2, 1
    )
    log(f"memory probe: {memory['probe']}")

    rows = {
        key: sample_inputs(load_spec(spec), 64, seed=INPUT_SEED).astype(np.float32)
        for key, spec in specs.items()
    }
    inputs = {(m, r): np.ascontiguousarray(rows[m][:r]) for m in MODELS for r in (1, 64)}
    payloads = {
        (m, r): infer_request(MODELS[m], {"x": inputs[(m, r)]}).SerializeToString()
        for m in MODELS
        for r in (1, 64)
    }

    for config in ("off", "on"):
        servers[config] = start_onnxforge(repo, config, args.threads, folder)
    loaded = {c: settle_rss(servers[c].pid, 0.5) for c in ("off", "on")}
    log(f"onnxforge servers up: {', '.join(f'{c} :{s.port}' for c, s in servers.items())}")

    parent, child = spawn.Pipe()
    compute = spawn.Process(target=compute_main, args=(str(repo), child), daemon=True)
    compute.start()
    processes.append((parent, compute))
    compute_conn = parent

    # The real answers: checked against ONNX Runtime, then served by the do-nothing server.
    import grpc

    responses: dict[tuple[str, int], bytes] = {}
    check: dict[str, float] = {}
    for config in ("on", "off"):
        with grpc.insecure_channel(f"127.0.0.1:{servers[config].port}") as channel:
            call = channel.unary_unary(METHOD)
            for (model, n), payload in payloads.items():
                answer = call(payload, timeout=REQUEST_TIMEOUT_S)
                compute_conn.send(("outputs", MODELS[model], inputs[(model, n)]))
                expected = compute_conn.recv()
                decoded = pb.ModelInferResponse.FromString(answer)
                got = {
                    t.name: np.frombuffer(raw, "<f4").reshape(t.shape)
                    for t, raw in zip(decoded.outputs, decoded.raw_output_contents, strict=True)
                }
                if set(got) != set(expected):
                    raise RuntimeError(f"{config} answered outputs {sorted(got)}")
                diff = max(float(np.max(np.abs(got[k] - expected[k]))) for k in got)
                check[f"{config} {model} {n} rows"] = diff
                if diff > 1e-5:
                    raise RuntimeError(f"{config} {model} {n} rows differs from ORT by {diff}")
                responses[(MODELS[model], n)] = answer
    log(f"answers checked against ONNX Runtime (max abs diff {max(check.values()):.1e})")

    parent, child = spawn.Pipe()
    null = spawn.Process(target=null_server_main, args=(responses, child), daemon=True)
    null.start()
    if not parent.poll(60):
        raise RuntimeError("the do-nothing server did not start")
    servers["null"] = Server("null", null.pid, parent.recv(), null, conn=parent)
    loaded["null"] = settle_rss(null.pid, 0.3)

    clients = []
    for _ in range(2 if args.two_clients_from else 1):
        parent, child = spawn.Pipe()
        process = spawn.Process(target=client_main, args=(child,), daemon=True)
        process.start()
        processes.append((parent, process))
        clients.append(parent)

    cells = make_cells(args)
    rng = random.Random(args.seed)
    quiet_left, retry_left = args.quiet_wait, args.retry_budget
    waits: list[float] = []
    rss_rounds: dict[str, list[int]] = defaultdict(list)
    log(
        f"{len(cells)} cells x {args.rounds} round(s), {args.warmup:g} s warm-up + "
        f"{args.duration:g} s each"
    )
    for round_index in range(args.rounds):
        order = cells[:]
        rng.shuffle(order)
        for cell in order:
            attempts: list[Attempt] = []
            while True:
                waited, _ = wait_quiet(args.quiet_cores, min(3.0, max(0.0, quiet_left)))
                quiet_left -= waited
                waits.append(waited)
                attempts.append(
                    run_cell(
                        cell, servers, clients, compute_conn, compute.pid, payloads, inputs, args
                    )
                )
                noisy = attempts[-1].others_cpu_s / args.duration > args.max_others
                if not noisy or len(attempts) > args.retries or retry_left <= 0:
                    break
                retry_left -= args.warmup + args.duration
            # The attempt during which other processes used the least CPU.
            add(cell, min(attempts, key=lambda a: a.others_cpu_s), args.duration)
            cell.discarded += len(attempts) - 1
        for config, server in servers.items():
            rss_rounds[config].append(proc_status(server.pid).get("VmRSS", 0))
        log(f"round {round_index + 1}/{args.rounds} done")
    sustained = sustain(servers, clients, compute_conn, compute.pid, payloads, inputs, args, log)
    final = {config: proc_status(server.pid) for config, server in servers.items()}

    summaries = [summarize(cell) for cell in cells]
    report: dict[str, Any] = {
        "benchmark": "serving",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "software": software(),
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "rows64_concurrency": args.rows64_concurrency,
            "intra_op_num_threads": args.threads,
            "two_client_processes_from_concurrency": args.two_clients_from or None,
            "client": "grpc.aio, closed loop, one channel per client process and server, "
            "prebuilt raw-contents request bytes, answers not decoded",
            "order": "every cell once per round, shuffled each round",
            "quiet_cores": args.quiet_cores,
            "quiet_wait_s_total": round(sum(waits), 1),
            "max_others_cores": args.max_others,
            "retries": args.retries,
            "discarded_noisy_attempts": sum(c.discarded for c in cells),
            "sustain_s": args.sustain,
            "quick": args.quick,
        },
        "models": {
            key: {
                "name": MODELS[key],
                "file_bytes": (repo / MODELS[key] / "1" / "model.onnx").stat().st_size,
                "request_bytes": {str(n): len(payloads[(key, n)]) for n in (1, 64)},
                "response_bytes": {str(n): len(responses[(MODELS[key], n)]) for n in (1, 64)},
            }
            for key in MODELS
        },
        "answer_check_max_abs_diff": max(check.values()),
        "cells": [s for s in summaries if s["config"] != "ort"],
        "ort": [s for s in summaries if s["config"] == "ort"],
    }
    memory["bench_repository"] = {
        "models": list(MODELS.values()),
        "model_file_bytes": sum(m["file_bytes"] for m in report["models"].values()),
    }
    for config in CONFIGS:
        rss_cells = [kb for c in cells if c.config == config for kb in c.rss_kb_after]
        by_kind: dict[str, list[int]] = defaultdict(list)
        for c in cells:
            if c.config == config and c.rss_kb_after:
                by_kind[f"rows{c.rows}_c{c.concurrency}"].append(c.rss_kb_after[-1])
        served = sum(len(x) for c in cells if c.config == config for x in c.latencies)
        memory[config] = {
            "label": LABELS[config],
            "rss_mib_loaded": round(loaded[config].get("VmRSS", 0) / 1024, 1),
            "peak_rss_mib_loaded": round(loaded[config].get("VmHWM", 0) / 1024, 1),
            "rss_mib_after_round": [round(kb / 1024, 1) for kb in rss_rounds[config]],
            "rss_mib_final": round(final[config].get("VmRSS", 0) / 1024, 1),
            "peak_rss_mib": round(final[config].get("VmHWM", 0) / 1024, 1),
            "rss_mib_min_max_after_cells": [
                round(min(rss_cells) / 1024, 1),
                round(max(rss_cells) / 1024, 1),
            ],
            "rss_mib_after_last_cell_of_kind": {
                k: round(v[0] / 1024, 1) for k, v in sorted(by_kind.items())
            },
            "growth_mib_first_to_last_round": round(
                (rss_rounds[config][-1] - rss_rounds[config][0]) / 1024, 1
            ),
            "requests_measured": served,
            "threads": final[config].get("Threads"),
        }
        if config in sustained:
            memory[config]["sustained"] = sustained[config]
    base = memory["empty_repository"]["rss_mib"]
    for key, files in (
        ("on", memory["bench_repository"]["model_file_bytes"]),
        ("bundled_models", memory["bundled_models"]["model_file_bytes"]),
    ):
        rss = memory[key]["rss_mib_loaded" if key == "on" else "rss_mib"]
        memory[key]["rss_over_empty_mib"] = round(rss - base, 1)
        memory[key]["rss_over_empty_per_file_mib"] = round((rss - base) / (files / 2**20), 2)
    report["memory"] = memory
    report["targets"] = targets(report)
    return report


SUSTAIN_LOADS = (("wide", 1, 128), ("wide", 64, 8), ("small", 1, 128), ("small", 64, 8))


def sustain(
    servers: dict[str, Server],
    clients: list[Any],
    compute: Any,
    compute_pid: int,
    payloads: dict[tuple[str, int], bytes],
    inputs: dict[tuple[str, int], np.ndarray],
    args: argparse.Namespace,
    log: Any,
) -> dict[str, dict[str, Any]]:
    """Load the onnxforge servers for ``args.sustain`` s more, sampling RSS after every chunk.

    Chunks of 2 s alternate between the two servers and cycle through 1-row requests at
    concurrency 128 and 64-row requests at concurrency 8, for both models.
    """
    if args.sustain <= 0:
        return {}
    chunk = argparse.Namespace(**{**vars(args), "warmup": 0.0, "duration": 2.0})
    out: dict[str, dict[str, Any]] = {
        config: {
            "requests": 0,
            "seconds": 0.0,
            "rss_mib_start": round(proc_status(servers[config].pid).get("VmRSS", 0) / 1024, 1),
            "rss_mib_samples": [],
        }
        for config in ("off", "on")
    }
    began = time.monotonic()
    index = 0
    while time.monotonic() - began < args.sustain:
        model, rows, concurrency = SUSTAIN_LOADS[(index // 2) % len(SUSTAIN_LOADS)]
        config = ("off", "on")[index % 2]
        cell = Cell(config, model, rows, concurrency)
        attempt = run_cell(cell, servers, clients, compute, compute_pid, payloads, inputs, chunk)
        entry = out[config]
        entry["requests"] += len(attempt.latencies)
        entry["errors"] = entry.get("errors", 0) + attempt.errors
        entry["seconds"] += chunk.duration
        entry["rss_mib_samples"].append(round(attempt.rss_kb / 1024, 1))
        index += 1
    for entry in out.values():
        samples = entry["rss_mib_samples"]
        entry["rss_mib_end"] = samples[-1] if samples else entry["rss_mib_start"]
        entry["growth_mib"] = round(entry["rss_mib_end"] - entry["rss_mib_start"], 1)
    log(
        "sustained load: "
        + "; ".join(
            f"{c} {e['requests']:,} requests, RSS {e['rss_mib_start']} -> {e['rss_mib_end']} MiB"
            for c, e in out.items()
        )
    )
    return out


# ----------------------------------------------------------------------------- targets


def find(report: dict, config: str, model: str, rows: int, concurrency: int) -> dict:
    for cell in report["cells"]:
        if (cell["config"], cell["model"], cell["rows"], cell["concurrency"]) == (
            config,
            model,
            rows,
            concurrency,
        ):
            return cell
    raise KeyError((config, model, rows, concurrency))


def ort_cell(report: dict, model: str, rows: int, threads: int) -> dict:
    return next(
        c for c in report["ort"] if (c["model"], c["rows"], c["threads"]) == (model, rows, threads)
    )


def _target(value: float, target: float, higher: bool, **detail: Any) -> dict[str, Any]:
    met = value >= target if higher else value <= target
    return {
        "value": round(value, 3),
        "target": target,
        "rule": ">=" if higher else "<=",
        "met": bool(met),
        **detail,
    }


def _paired(a: dict, b: dict, key: str = "per_round_requests_per_s") -> list[float]:
    return [round(x / y, 3) if y else float("nan") for x, y in zip(a[key], b[key], strict=True)]


def targets(report: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    threads = report["settings"]["intra_op_num_threads"] or 1
    for model in MODELS:
        ours, null = find(report, "on", model, 1, 1), find(report, "null", model, 1, 1)
        off = find(report, "off", model, 1, 1)
        compute = ort_cell(report, model, 1, threads)["p50_ms"]
        out[f"c1_p50_vs_framework_{model}"] = _target(
            ours["p50_ms"] / null["p50_ms"],
            1.3,
            higher=False,
            what=f"{MODELS[model]}, 1 row, concurrency 1: onnxforge (batching on) p50 / (b) p50",
            ours_p50_ms=ours["p50_ms"],
            framework_p50_ms=null["p50_ms"],
            batching_off_ratio=round(off["p50_ms"] / null["p50_ms"], 3),
            compute_p50_ms=compute,
            floor_with_compute=round((null["p50_ms"] + compute) / null["p50_ms"], 3),
        )
    if 32 in report["settings"]["concurrency"]:
        on, off = find(report, "on", "wide", 1, 32), find(report, "off", "wide", 1, 32)
        null = find(report, "null", "wide", 1, 32)
        out["wide_c32_batching_on_vs_off"] = _target(
            on["requests_per_s"] / off["requests_per_s"],
            2.0,
            higher=True,
            what="wide-mlp, 1 row, concurrency 32: requests/s batching on / batching off",
            on_requests_per_s=on["requests_per_s"],
            off_requests_per_s=off["requests_per_s"],
            per_round=_paired(on, off),
        )
        out["wide_c32_on_vs_framework"] = _target(
            on["requests_per_s"] / null["requests_per_s"],
            0.6,
            higher=True,
            what="wide-mlp, 1 row, concurrency 32: requests/s batching on / (b)",
            on_requests_per_s=on["requests_per_s"],
            framework_requests_per_s=null["requests_per_s"],
            per_round=_paired(on, null),
        )
    for model in MODELS:
        ort64 = ort_cell(report, model, 64, threads)
        ceiling = ort64["rows_per_s"]
        on = find(report, "on", model, 64, 1)
        others = {
            f"{config}_c{c}": round(find(report, config, model, 64, c)["rows_per_s"] / ceiling, 3)
            for config in ("on", "off")
            for c in report["settings"]["rows64_concurrency"]
        }
        out[f"rows64_vs_ort_{model}"] = _target(
            on["rows_per_s"] / ceiling,
            0.7,
            higher=True,
            what=f"{MODELS[model]}, 64-row requests, concurrency 1: onnxforge (batching on) "
            f"rows/s / (a) batch-64 rows/s ({threads} thread(s))",
            ours_rows_per_s=on["rows_per_s"],
            ort_rows_per_s=ceiling,
            by_p50=round(ort64["p50_ms"] / on["p50_ms"], 3),
            all_ratios=others,
        )
    return out


# ----------------------------------------------------------------------------- reporting


def software() -> dict[str, str]:
    import grpc
    import onnxruntime

    versions = {
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    with contextlib.suppress(Exception):
        import onnxforge

        versions["onnxforge"] = str(onnxforge.__version__)
    with contextlib.suppress(Exception):
        import google.protobuf

        versions["protobuf"] = google.protobuf.__version__
    return versions


def machine() -> dict[str, Any]:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    return {
        "cpu_model": info.get("model name") or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
    }


def _table(lines: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("| " + " | ".join(cells) + " |")
        if n == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def print_report(report: dict) -> None:
    s = report["settings"]
    print(
        f"{report['machine']['cpu_model']}, {report['machine']['logical_cpus']} CPUs; "
        f"onnxruntime {report['software']['onnxruntime']}, grpcio {report['software']['grpcio']}; "
        f"intra-op threads {s['intra_op_num_threads']}; {s['rounds']} rounds x "
        f"{s['duration_s']:g} s per cell"
    )
    print("\n(a) ONNX Runtime in-process, one call at a time")
    lines = [["model", "threads", "batch", "p50 ms", "p90 ms", "calls/s", "rows/s"]]
    for c in report["ort"]:
        lines.append(
            [
                c["model_name"],
                str(c["threads"]),
                str(c["rows"]),
                f"{c['p50_ms']:.3f}",
                f"{c['p90_ms']:.3f}",
                f"{c['requests_per_s']:,.0f}",
                f"{c['rows_per_s']:,.0f}",
            ]
        )
    _table(lines)
    print("\n(b) do-nothing gRPC server and onnxforge, closed loop")
    lines = [
        [
            "model",
            "rows",
            "conc",
            "server",
            "req/s",
            "rows/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "err",
            "srv CPU us/req",
            "rows/run",
            "others cores",
        ]
    ]
    order = {"null": 0, "off": 1, "on": 2}
    for c in sorted(
        report["cells"], key=lambda c: (c["model"], c["rows"], c["concurrency"], order[c["config"]])
    ):
        lines.append(
            [
                c["model_name"],
                str(c["rows"]),
                str(c["concurrency"]),
                {"null": "(b) do-nothing", "off": "batching off", "on": "batching on"}[c["config"]],
                f"{c['requests_per_s']:,.0f}",
                f"{c['rows_per_s']:,.0f}",
                f"{c['p50_ms']:.3f}",
                f"{c['p90_ms']:.3f}",
                f"{c['p99_ms']:.3f}",
                str(c["errors"]),
                f"{c['server_cpu_us_per_request']:,.0f}",
                f"{c['rows_per_session_run']:.1f}" if "rows_per_session_run" in c else "-",
                f"{c['others_cores']:.2f}",
            ]
        )
    _table(lines)
    m = report["memory"]
    print("\nmemory (VmRSS)")
    lines = [["server", "model files MiB", "RSS MiB", "over empty MiB"]]
    lines.append(["onnxforge, empty repository", "0", f"{m['empty_repository']['rss_mib']}", "-"])
    lines.append(
        [
            "onnxforge, digits-mlp + wide-mlp fp32",
            f"{m['bench_repository']['model_file_bytes'] / 2**20:.1f}",
            f"{m['on']['rss_mib_loaded']}",
            f"{m['on']['rss_over_empty_mib']}",
        ]
    )
    lines.append(
        [
            f"onnxforge, bundled models/ ({len(m['bundled_models']['models'])} models)",
            f"{m['bundled_models']['model_file_bytes'] / 2**20:.1f}",
            f"{m['bundled_models']['rss_mib']}",
            f"{m['bundled_models']['rss_over_empty_mib']}",
        ]
    )
    _table(lines)
    p = m["probe"]
    print(
        f"fresh process, the server's Registry: imports {p['imports_mib']} MiB, models loaded "
        f"{p['loaded_mib']}, after malloc_trim {p['loaded_after_malloc_trim_mib']}, after 64-row "
        f"runs {p['after_runs_mib']}; each extra wide-mlp session "
        f"{p['per_extra_wide_session_mib']} MiB (file {p['wide_file_mib']} MiB)"
    )
    p = m["probe_bundled"]
    print(
        f"fresh process, bundled models/: imports {p['imports_mib']} MiB, loaded "
        f"{p['loaded_mib']}, after malloc_trim {p['loaded_after_malloc_trim_mib']}"
    )
    lines = [
        ["server (VmRSS MiB)", "loaded", "after each round", "cells min-max", "final", "peak (HWM)"]
    ]
    for config in CONFIGS:
        e = m[config]
        lines.append(
            [
                LABELS[config],
                f"{e['rss_mib_loaded']}",
                ", ".join(map(str, e["rss_mib_after_round"])),
                "-".join(map(str, e["rss_mib_min_max_after_cells"])),
                f"{e['rss_mib_final']}",
                f"{e['peak_rss_mib']}",
            ]
        )
    _table(lines)
    for config in ("off", "on"):
        e = m[config].get("sustained")
        if e:
            print(
                f"sustained load, {LABELS[config]}: {e['requests']:,} requests in "
                f"{e['seconds']:g} s, RSS {e['rss_mib_start']} -> {e['rss_mib_end']} MiB "
                f"(samples {', '.join(map(str, e['rss_mib_samples']))})"
            )
    print("\ntargets")
    lines = [["target", "value", "rule", "met"]]
    for name, t in report["targets"].items():
        lines.append(
            [name, f"{t['value']:.3f}", f"{t['rule']} {t['target']}", "yes" if t["met"] else "NO"]
        )
    _table(lines)
    sys.stdout.flush()


COLORS = {"null": "0.45", "off": "#dd8452", "on": "#4c72b0", "ort": "#55a868"}


def _series(report: dict, config: str, model: str) -> list[dict]:
    return sorted(
        (c for c in report["cells"] if (c["config"], c["model"], c["rows"]) == (config, model, 1)),
        key=lambda c: c["concurrency"],
    )


def _reference(ax: Any, value: float, data: list[float], text: str, below: bool) -> None:
    """(a) as a dotted line when it fits near the data, else as a note in the corner."""
    low, high = min(data), max(data)
    if low / 3 <= value <= high * 3:
        ax.axhline(value, color=COLORS["ort"], linestyle=":", linewidth=1.3)
        ax.annotate(
            text,
            (0.01, value),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(2, -10 if below else 4),
            fontsize=7,
            color=COLORS["ort"],
        )
    else:
        where = "below" if value < low else "above"
        ax.text(
            0.02,
            0.97,
            f"{text} (far {where} this axis)",
            transform=ax.transAxes,
            va="top",
            fontsize=7,
            color=COLORS["ort"],
        )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    threads = report["settings"]["intra_op_num_threads"] or 1
    levels = report["settings"]["concurrency"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 10), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    for row, model in enumerate(MODELS):
        ax_rps, ax_p50, ax_rows = axes[row]
        name = MODELS[model]
        one = ort_cell(report, model, 1, threads)
        rates: list[float] = []
        p50s: list[float] = []
        for config in CONFIGS:
            cells = _series(report, config, model)
            x = [c["concurrency"] for c in cells]
            style = {"color": COLORS[config], "marker": "o", "label": LABELS[config]}
            if config == "null":
                style["linestyle"] = "--"
            rate = [c["requests_per_s"] for c in cells]
            p50 = [c["p50_ms"] for c in cells]
            rates += rate
            p50s += p50
            ax_rps.plot(x, rate, **style)
            ax_p50.plot(x, p50, **style)
            for c in cells:
                ax_rps.annotate(
                    f"{c['requests_per_s']:,.0f}",
                    (c["concurrency"], c["requests_per_s"]),
                    textcoords="offset points",
                    xytext={"null": (4, 5), "on": (4, 5), "off": (4, -11)}[config],
                    fontsize=7,
                    color=COLORS[config],
                )
        _reference(
            ax_rps,
            one["requests_per_s"],
            rates,
            f"(a) session.run, batch 1, one call at a time: {one['requests_per_s']:,.0f}/s",
            below=False,
        )
        _reference(
            ax_p50,
            one["p50_ms"],
            p50s,
            f"(a) session.run, batch 1: {one['p50_ms']:.3f} ms",
            below=False,
        )
        for ax in (ax_rps, ax_p50, ax_rows):
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.10g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        for ax in (ax_rps, ax_p50):
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(level) for level in levels])
            ax.grid(which="both", alpha=0.25)
            ax.set_xlabel("concurrent requests (closed loop), log scale")
        ax_rps.set_ylabel("requests / s, log scale")
        ax_rps.set_title(f"{name}: throughput, 1-row requests", fontsize=10)
        ax_p50.set_ylabel("p50 latency, ms, log scale")
        ax_p50.set_title(f"{name}: median latency, 1-row requests", fontsize=10)
        bottom, top = ax_rps.get_ylim()
        ax_rps.set_ylim(bottom, top * 1.5)

        # 64-row requests: rows/s against (a)'s batch-64 rows/s.
        ceiling = ort_cell(report, model, 64, threads)["rows_per_s"]
        bars = [("(a)\nbatch 64", ceiling, COLORS["ort"])]
        for c in report["settings"]["rows64_concurrency"]:
            for config in CONFIGS:
                cell = find(report, config, model, 64, c)
                short = {"null": "(b)", "off": "off", "on": "on"}[config]
                bars.append((f"{short}\nc={c}", cell["rows_per_s"], COLORS[config]))
        x = np.arange(len(bars))
        ax_rows.bar(x, [b[1] for b in bars], color=[b[2] for b in bars], width=0.7)
        for i, (_, value, _) in enumerate(bars):
            ax_rows.text(
                i,
                value * 1.08,
                f"{value:,.0f}\n{value / ceiling:.1%}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax_rows.axhline(0.7 * ceiling, color=COLORS["ort"], linestyle="--", linewidth=0.9)
        ax_rows.text(
            len(bars) - 0.5,
            0.7 * ceiling,
            "70% of (a)",
            ha="right",
            va="bottom",
            fontsize=7,
            color=COLORS["ort"],
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
        values = [b[1] for b in bars]
        ax_rows.set_ylim(min(values) / 3, max(values) * 6)
        ax_rows.set_xticks(x, [b[0] for b in bars], fontsize=8)
        ax_rows.set_ylabel("rows / s, log scale (label: share of (a))")
        ax_rows.set_xlabel(
            f"(a): session.run, {threads} thread{'s' if threads > 1 else ''} as in the server; "
            "c: concurrency"
        )
        ax_rows.set_title(f"{name}: throughput, 64-row requests", fontsize=10)
        ax_rows.grid(axis="y", which="both", alpha=0.25)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower left", ncol=1, fontsize=9, frameon=False)
    lines = [
        f"{'met' if t['met'] else 'MISSED'}: {t['what']}: {t['value']:.3f} "
        f"(target {t['rule']} {t['target']})"
        for t in report["targets"].values()
    ]
    fig.text(0.35, 0.005, "\n".join(lines), fontsize=7.5, va="bottom", family="monospace")
    s, m = report["settings"], report["machine"]
    others = [c["others_cores"] for c in report["cells"] + report["ort"]]
    fig.suptitle(
        f"onnxforge serving, every point from one run: {m['cpu_model']}, {m['logical_cpus']} CPUs "
        f"shared by the server and the load generator; onnxruntime "
        f"{report['software']['onnxruntime']}, grpcio {report['software']['grpcio']}, "
        f"{s['intra_op_num_threads']} intra-op thread(s); {s['rounds']} interleaved rounds x "
        f"{s['duration_s']:g} s per point\nother processes on this shared machine used "
        f"{np.median(others):.2f} cores (median over the points; up to {max(others):.2f}) while "
        "they were measured",
        fontsize=9.5,
    )
    fig.tight_layout(rect=(0, 0.085, 1, 0.955))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
