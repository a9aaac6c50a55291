"""The per-request cost of ``onnxforge serve`` against do-nothing gRPC servers.

A small model (a 32-64-64-6 MLP, built into a scratch repository) makes ``session.run``
cheap (tens of microseconds), so what a 1-row request costs is the server's own path:
gRPC, the data plane, the batcher, statistics and metrics. These servers answer the same
``ModelInfer`` bytes:

- ``onnxforge``: ``python -m onnxforge serve`` (the harness's ``ServerProcess``), metrics on
  (gRPC on grpc.aio, on uvloop: the defaults);
- ``onnxforge-threads``: the same with ``--grpc-threads 64`` (ModelInfer on the thread pool,
  one call running at a time);
- ``null-aio``: a do-nothing ``grpc.aio`` server answering a canned response (the one of
  ``serving.py``, ``serving_workers.null_server_main``, with onnxforge's server options);
- ``null-aio-uvloop``: the same on uvloop;
- ``baseline`` (``--baseline DIR``): onnxforge served from another source tree, to compare
  a change with what it changes;
- ``null-sync``: the same canned answer from a thread-pool (``grpc.server``) servicer, the
  cheapest Python gRPC server there is;
- ``onnxforge-wN`` (``--workers 1,2,...``): ``onnxforge serve --workers N`` for each N over 1,
  to read how throughput scales with worker processes (on a machine with more cores than
  this one's two). Every server is sent to over ``CHANNELS`` connections of their own, so
  that the kernel spreads them over the workers that share the port.

For each round and each server (in an order that alternates between rounds), closed-loop
clients (``onnxforge.bench.drive``; prebuilt request bytes on one ``grpc.aio`` channel, in
this process) run at 1 and at 32 concurrent requests. The server process's CPU time is read
from ``/proc`` before and after each cell: CPU per request is that over the answers. The
table and the JSON hold the median of the rounds::

    python benchmarks/hot_path.py                      # 3 rounds, 3 s per cell
    python benchmarks/hot_path.py --rounds 5 --json benchmarks/results/hot_path.json
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from serving_workers import METHOD, null_server_main, null_sync_main, null_uvloop_main

from onnxforge.bench import (
    Load,
    ServerProcess,
    drive,
    machine_info,
    markdown_table,
    percentiles_ms,
    process_tree_cpu_seconds,
    software_versions,
    write_json,
)
from onnxforge.protocol.generated import inference_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
MODEL = "hot-path-mlp"
SPEC = f"""\
name: {MODEL}
description: 32-64-64-6 MLP, small enough that the server's own path dominates
input: {{name: x, shape: [32], dtype: float32}}
output: {{name: probabilities}}
seed: 1
layers:
  - {{type: dense, units: 64, activation: relu}}
  - {{type: dense, units: 64, activation: relu}}
  - {{type: dense, units: 6, activation: softmax}}
serving: {{max_batch_size: 64, max_queue_delay_us: 500, instances: 1}}
"""
SERVERS = ("onnxforge", "onnxforge-threads", "null-aio", "null-aio-uvloop", "null-sync")


def steal_seconds() -> float:
    """CPU seconds stolen by the hypervisor, all CPUs (``/proc/stat``); 0.0 if unreadable."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def in_process(repo: Path, payload: bytes, requests: int = 5000, rounds: int = 7) -> float:
    """Microseconds per ModelInfer through the servicer, data plane and batcher: no gRPC,
    sequential (a lone request each time), the fastest of ``rounds``."""
    from onnxforge.server.dataplane import DataPlane
    from onnxforge.server.metrics import Metrics
    from onnxforge.server.registry import Registry
    from onnxforge.server.service import InferenceService
    from onnxforge.server.stats import Statistics

    class Context:
        def time_remaining(self) -> float:
            return 30.0

    async def run() -> float:
        statistics = Statistics(Metrics())
        registry = Registry(repo, build_missing=False, on_batch=statistics.batch, inline_us=200)
        await registry.load_all()
        service = InferenceService(DataPlane(registry, statistics))
        request, context = pb.ModelInferRequest.FromString(payload), Context()
        for _ in range(500):
            await service.ModelInfer(request, context)
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            for _ in range(requests):
                await service.ModelInfer(request, context)
            times.append(1e6 * (time.perf_counter() - began) / requests)
        await registry.close()
        return min(times)

    return asyncio.run(run())


def request_bytes() -> bytes:
    rows = np.random.default_rng(3).normal(size=(1, 32)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=MODEL, id="hot")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 32])
    request.outputs.add(name="probabilities")
    request.raw_input_contents.append(rows.tobytes())
    return request.SerializeToString()


CHANNELS = 4  # connections per server: worker processes sharing a port get one each


class Client:
    """``CHANNELS`` ``grpc.aio`` channels per server port, each a connection of its own
    (gRPC shares one per address within a process otherwise); sends raw request bytes."""

    def __init__(self) -> None:
        self.calls: dict[int, list[Any]] = {}
        self.channels: list[Any] = []

    async def call(self, port: int) -> list[Any]:
        import grpc

        if port not in self.calls:
            calls = []
            for _ in range(CHANNELS):
                channel = grpc.aio.insecure_channel(
                    f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
                )
                await asyncio.wait_for(channel.channel_ready(), 30)
                self.channels.append(channel)
                calls.append(channel.unary_unary(METHOD))
            self.calls[port] = calls
        return self.calls[port]

    async def cell(
        self, port: int, pid: int, payload: bytes, concurrency: int, args: argparse.Namespace
    ) -> dict[str, Any]:
        calls = await self.call(port)

        async def send(worker: int, index: int) -> object:
            return await calls[worker % len(calls)](payload, timeout=30.0)

        await drive(send, Load(concurrency, duration=args.warmup))  # unmeasured warm-up
        cpu, began = process_tree_cpu_seconds(pid), time.monotonic()
        load_before, steal = os.getloadavg()[0], steal_seconds()
        outcome = await drive(send, Load(concurrency, duration=args.duration))
        cpu = process_tree_cpu_seconds(pid) - cpu
        seconds = time.monotonic() - began
        steal = steal_seconds() - steal
        p50, p99 = percentiles_ms(outcome.latencies, (50, 99))
        answered = outcome.answered
        return {
            "requests_per_s": outcome.requests_per_second,
            "p50_ms": p50,
            "p99_ms": p99,
            "errors": outcome.errors,
            "first_error": outcome.first_error,
            # All requests sent over the cell (a little more than those measured).
            "server_cpu_us_per_request": 1e6 * cpu / max(1, outcome.sent) if answered else None,
            "server_cores": cpu / seconds,
            "load_average_1m": load_before,
            # CPU time the hypervisor gave to other guests (all CPUs): a noisy host.
            "steal_cores": steal / seconds,
        }


def start_servers(repo: Path, payload: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Every server; values are (pid, port, stop)."""
    extra = ["--no-build", "--log-level", "warning", *args.serve_args]
    extra[extra.index("--log-level") + 1] = "info"  # the "serving" line is an info line
    onnxforge = ServerProcess(repo, *extra, threads=args.threads, cwd=ROOT)
    servers: dict[str, Any] = {"onnxforge": (onnxforge.pid, onnxforge.port, onnxforge.close)}
    for workers in args.workers:
        if workers > 1:
            many = ServerProcess(
                repo, *extra, "--workers", str(workers), threads=args.threads, cwd=ROOT
            )
            servers[f"onnxforge-w{workers}"] = (many.pid, many.port, many.close)
    if "onnxforge-threads" in args.servers:
        pool = ServerProcess(repo, *extra, "--grpc-threads", "64", threads=args.threads, cwd=ROOT)
        servers["onnxforge-threads"] = (pool.pid, pool.port, pool.close)
    if args.baseline is not None:  # the same server from another source tree (cwd first)
        other = ServerProcess(repo, *extra, threads=args.threads, cwd=args.baseline)
        servers["baseline"] = (other.pid, other.port, other.close)
    import grpc

    channel = grpc.insecure_channel(onnxforge.url)
    response = channel.unary_unary(METHOD)(payload, timeout=30)
    channel.close()
    spawn = multiprocessing.get_context("spawn")
    for name, target, given in (
        ("null-aio", null_server_main, {(MODEL, 1): response}),
        ("null-aio-uvloop", null_uvloop_main, {(MODEL, 1): response}),
        ("null-sync", null_sync_main, {payload: response}),
    ):
        if name not in args.servers:
            continue
        parent, child = spawn.Pipe()
        process = spawn.Process(target=target, args=(given, child), daemon=True)
        process.start()
        if not parent.poll(60):
            raise RuntimeError(f"{name} did not start")
        port = parent.recv()

        def stop(parent: Any = parent, process: Any = process) -> None:
            parent.send("stop")
            process.join(10)

        servers[name] = (process.pid, port, stop)
    return servers


def build(repo: Path) -> None:
    import subprocess

    (repo / MODEL).mkdir(parents=True)
    spec = repo / MODEL / "spec.yaml"
    spec.write_text(SPEC)
    subprocess.run(
        [sys.executable, "-m", "onnxforge", "build", str(spec), "--repository", str(repo)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


async def measure(servers: dict[str, Any], payload: bytes, args: argparse.Namespace) -> Any:
    client = Client()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {c: [] for c in args.concurrency} for name in args.servers
    }
    for round_ in range(args.rounds):
        order = list(args.servers) if round_ % 2 == 0 else list(reversed(args.servers))
        for name in order:
            pid, port, _ = servers[name]
            for concurrency in args.concurrency:
                cell = await client.cell(port, pid, payload, concurrency, args)
                runs[name][concurrency].append(cell)
                print(
                    f"round {round_ + 1} {name:10s} c={concurrency:<3d} "
                    f"{cell['requests_per_s']:8.0f} req/s  p50 {cell['p50_ms']:.3f} ms  "
                    f"p99 {cell['p99_ms']:.3f} ms  cpu/req "
                    f"{cell['server_cpu_us_per_request'] or 0:.0f} us  "
                    f"load {cell['load_average_1m']:.2f} steal {cell['steal_cores']:.2f}",
                    flush=True,
                )
    for channel in client.channels:
        await channel.close()
    return runs


def median_of(cells: list[dict[str, Any]], key: str) -> float | None:
    values = [cell[key] for cell in cells if cell[key] is not None]
    return statistics.median(values) if values else None


def summarize(runs: Any) -> list[dict[str, Any]]:
    rows = []
    for name, by_concurrency in runs.items():
        for concurrency, cells in by_concurrency.items():
            keys = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")
            row: dict[str, Any] = {"server": name, "concurrency": concurrency}
            row.update({key: median_of(cells, key) for key in keys})
            row["errors"] = sum(cell["errors"] for cell in cells)
            rows.append(row)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="measured s per cell")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured s per cell")
    parser.add_argument("--concurrency", type=lambda t: [int(v) for v in t.split(",")],
                        default=[1, 32])  # fmt: skip
    parser.add_argument("--servers", type=lambda t: t.split(","), default=list(SERVERS))
    parser.add_argument("--threads", type=int, default=None, help="onnxforge --threads")
    parser.add_argument("--workers", type=lambda t: [int(v) for v in t.split(",")], default=[1],
                        help="also onnxforge serve --workers N for each N over 1")  # fmt: skip
    parser.add_argument("--serve-arg", dest="serve_args", action="append", default=[],
                        help="more `onnxforge serve` arguments (repeatable)")  # fmt: skip
    parser.add_argument("--baseline", type=Path, default=None,
                        help="also serve from this tree (a `git archive` of HEAD)")  # fmt: skip
    parser.add_argument("--in-process", action="store_true",
                        help="only time ModelInfer in this process, without gRPC")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline is not None and "baseline" not in args.servers:
        args.servers = ["baseline", *args.servers]
    args.servers += [f"onnxforge-w{n}" for n in args.workers if n > 1]
    payload = request_bytes()
    with tempfile.TemporaryDirectory(prefix="hot-path-") as folder:
        repo = Path(folder) / "repository"
        build(repo)
        if args.in_process:
            print(f"ModelInfer in process, no gRPC: {in_process(repo, payload):.1f} us")
            return 0
        servers = start_servers(repo, payload, args)
        try:
            load_before = os.getloadavg()
            runs = asyncio.run(measure(servers, payload, args))
        finally:
            for _, _, stop in servers.values():
                stop()
    rows = summarize(runs)
    headers = ["server", "clients", "req/s", "p50 ms", "p99 ms", "CPU us/req", "errors"]
    table = [
        [r["server"], str(r["concurrency"]), f"{r['requests_per_s']:,.0f}", f"{r['p50_ms']:.3f}",
         f"{r['p99_ms']:.3f}", f"{r['server_cpu_us_per_request'] or 0:.0f}", str(r["errors"])]
        for r in rows
    ]  # fmt: skip
    print(f"\nmedians of {args.rounds} rounds, {args.duration:g} s per cell")
    print(markdown_table(headers, table))
    if args.json is not None:
        write_json(
            args.json,
            {
                "settings": {**vars(args), "json": str(args.json), "baseline": str(args.baseline)},
                "machine": machine_info(),
                "software": software_versions(),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "medians": rows,
                "runs": runs,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
