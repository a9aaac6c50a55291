"""The cells of ``serving.py``: one (configuration, model, rows, concurrency) each.

A cell is measured once per round (an :class:`Attempt`, or several when other processes
were busy during it), its attempts added up, and summarized into the JSON's cell entries.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from serving_workers import MODELS, REQUEST_TIMEOUT_S

from onnxforge.bench import machine_busy, percentiles_ms, process_cpu_seconds, process_status

CONFIGS = ("null", "off", "on")  # (b), onnxforge batching off, onnxforge batching on
LABELS = {
    "ort": "(a) ONNX Runtime in-process",
    "null": "(b) do-nothing gRPC server",
    "off": "onnxforge, batching off",
    "on": "onnxforge, batching on",
}


@dataclass
class Target:
    """One server under test: its process, port, and how to stop it."""

    config: str  # null | off | on
    pid: int
    port: int
    stop: Callable[[], None]
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
        return int(stats.execution_count), int(stats.inference_count)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.stop()


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


@dataclass
class Rig:
    """Everything a cell is measured with: servers, load processes, (a), inputs."""

    servers: dict[str, Target]
    clients: list[Any]  # pipes to the load generator processes
    compute: Any  # pipe to (a)
    compute_pid: int
    payloads: dict[tuple[str, int], bytes]  # prebuilt request bytes per (model, rows)
    inputs: dict[tuple[str, int], np.ndarray]


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


def _send(cell: Cell, rig: Rig, start: float, args: argparse.Namespace) -> list[Any]:
    """Tell (a) or the load processes to run ``cell`` from ``start``; the pipes to read."""
    if cell.config == "ort":
        rows = rig.inputs[(cell.model, cell.rows)]
        name = MODELS[cell.model]
        rig.compute.send(("run", name, cell.threads, rows, start, args.warmup, args.duration))
        return [rig.compute]
    port = rig.servers[cell.config].port
    n = 2 if 0 < args.two_clients_from <= cell.concurrency else 1
    cell.client_processes = n
    shares = [cell.concurrency // n + (i < cell.concurrency % n) for i in range(n)]
    used = []
    payload = rig.payloads[(cell.model, cell.rows)]
    for conn, share in zip(rig.clients, shares, strict=False):
        if share:
            conn.send(("cell", port, payload, share, start, args.warmup, args.duration))
            used.append(conn)
    return used


def run_cell(cell: Cell, rig: Rig, args: argparse.Namespace) -> Attempt:
    """Measure ``cell`` once: its requests, and the CPU of the server, the client, the rest."""
    name = MODELS[cell.model]
    server = rig.servers.get(cell.config)
    before = server.runs(name) if server is not None else (0, 0)
    start = time.monotonic() + 0.05
    window = (start + args.warmup, start + args.warmup + args.duration)
    used = _send(cell, rig, start, args)
    pid = rig.compute_pid if server is None else server.pid
    time.sleep(max(0.0, window[0] - time.monotonic()))
    (busy0, irq0), cpu0 = machine_busy(), process_cpu_seconds(pid)
    time.sleep(max(0.0, window[1] - time.monotonic()))
    (busy1, irq1), cpu1 = machine_busy(), process_cpu_seconds(pid)
    results = []
    for conn in used:
        if not conn.poll(args.warmup + args.duration + REQUEST_TIMEOUT_S + 30):
            raise RuntimeError(f"no answer from a load process for {cell.key}")
        results.append(conn.recv())
    client_cpu = sum(r["cpu_s"] for r in results)
    after = server.runs(name) if server is not None else (0, 0)
    return Attempt(
        session_runs=after[0] - before[0],
        session_rows=after[1] - before[1],
        latencies=np.concatenate([r["latencies"] for r in results]),
        errors=sum(r["errors"] for r in results),
        first_error=next((r["first_error"] for r in results if r.get("first_error")), None),
        server_cpu_s=cpu1 - cpu0,
        client_cpu_s=client_cpu,
        others_cpu_s=max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - client_cpu),
        irq_s=irq1 - irq0,
        rss_kb=process_status(pid).get("VmRSS", 0) if server is not None else 0,
    )


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


def _per_request(cpu_s: float, requests: int) -> float | None:
    return round(1e6 * cpu_s / requests, 1) if requests else None


def _cores(cpu_s: float, seconds: float) -> float | None:
    return round(cpu_s / seconds, 2) if seconds else None


def summarize(cell: Cell) -> dict[str, Any]:
    """The JSON entry of one cell: rates, percentiles, CPU, rows per session run."""
    latencies = np.concatenate(cell.latencies) if cell.latencies else np.zeros(0)
    requests = len(latencies)
    rps = requests / cell.seconds if cell.seconds else 0.0
    p50, p90, p99 = percentiles_ms(latencies, (50, 90, 99))
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
        "p50_ms": round(p50, 4),
        "p90_ms": round(p90, 4),
        "p99_ms": round(p99, 4),
        "per_round_requests_per_s": [round(v, 1) for v in cell.per_round_rps],
        "others_cores": _cores(cell.others_cpu_s, cell.seconds),
        "interrupt_cores": _cores(cell.irq_s, cell.seconds),
        "discarded_noisy_attempts": cell.discarded,
    }
    if cell.config != "ort":
        out |= {
            "client_processes": cell.client_processes,
            "server_cpu_us_per_request": _per_request(cell.server_cpu_s, requests),
            "client_cpu_us_per_request": _per_request(cell.client_cpu_s, requests),
            "server_cores": round(cell.server_cpu_s / cell.seconds, 2),
            "client_cores": round(cell.client_cpu_s / cell.seconds, 2),
            "server_rss_mib_after": [round(kb / 1024, 1) for kb in cell.rss_kb_after],
        }
        if cell.session_runs:
            out["rows_per_session_run"] = round(cell.session_rows / cell.session_runs, 2)
        if cell.first_error:
            out["first_error"] = cell.first_error
    return out
