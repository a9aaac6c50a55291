"""The cells of ``serving.py``: one (server, model, rows, concurrency) each.

A cell is measured once per round (an :class:`Attempt`, or several when other processes
were busy during it: the quietest is kept) and summarized as the median of its rounds.
Server CPU is read over the server's whole process tree (``/proc``), so a server that hands
requests to worker processes is charged for them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hot_path import steal_seconds
from serving_workers import MODELS, REQUEST_TIMEOUT_S

from onnxforge.bench import machine_busy, percentiles_ms, process_tree_cpu_seconds

#: onnxforge with one ``serve`` flag changed from its defaults: does any flag beat them?
#: Measured when ``--servers`` names them (or ``--flags``), not in a default run.
VARIANTS = {
    "onnxforge-grpc-threads": ["--grpc-threads", "64"],
    "onnxforge-threads-1": ["--threads", "1"],
    "onnxforge-spinning": ["--spinning"],
    "onnxforge-workers": ["--workers", "auto"],
    "onnxforge-no-pin-loop": ["--no-pin-loop"],
}
#: Every server there may be, in the order of the first round (later rounds alternate).
SERVERS = ("onnxforge", *VARIANTS, "null-aio", "null-aio-uvloop", "null-sync", "kserve",
           "mlserver", "mlserver-batching", "mlserver-inline",
           "mlserver-inline-batching")  # fmt: skip
DEFAULT_SERVERS = tuple(name for name in SERVERS if name not in VARIANTS)
LABELS = {
    "ort": "ONNX Runtime in-process",
    "onnxforge": "onnxforge serve (defaults)",
    **{name: f"onnxforge serve {' '.join(args)}" for name, args in VARIANTS.items()},
    "null-aio": "do-nothing grpc.aio server",
    "null-aio-uvloop": "do-nothing grpc.aio server on uvloop",
    "null-sync": "do-nothing grpc thread-pool server",
    "kserve": "KServe ModelServer + ORT",
    "mlserver": "MLServer + ORT",
    "mlserver-batching": "MLServer + ORT, adaptive batching",
    "mlserver-inline": "MLServer + ORT, no worker process",
    "mlserver-inline-batching": "MLServer + ORT, no worker process, adaptive batching",
}
#: (rows per request, concurrency) of every server cell.
LOADS = ((1, 1), (1, 32), (64, 4))


@dataclass
class Target:
    """One server under test: the root process of its tree, its port, how to stop it."""

    name: str
    pid: int
    port: int
    stop: Callable[[], None]

    def close(self) -> None:
        self.stop()


@dataclass
class Attempt:
    """One measurement of one cell."""

    latencies: np.ndarray
    errors: int
    first_error: str | None
    server_cpu_s: float
    client_cpu_s: float
    others_cpu_s: float
    load_average: float  # the 1-minute load average at the start
    steal_s: float = 0.0  # CPU time the hypervisor gave other guests (all CPUs)

    @property
    def requests(self) -> int:
        return len(self.latencies)


@dataclass
class Cell:
    server: str  # a SERVERS name, or "ort"
    model: str  # small | wide
    rows: int
    concurrency: int  # client coroutines; for "ort": 1 (one call at a time)
    threads: int = 0  # for "ort": intra-op threads (0: ONNX Runtime's choice)
    rounds: list[Attempt] = field(default_factory=list)
    discarded: int = 0  # attempts thrown away because other processes were busy

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        return (self.server, self.model, self.rows, self.concurrency, self.threads)


@dataclass
class Rig:
    """Everything a cell is measured with: servers, the load process, ONNX Runtime alone."""

    servers: dict[str, Target]
    client: Any  # pipe to the load generator process
    compute: Any  # pipe to the in-process ONNX Runtime worker
    compute_pid: int
    payloads: dict[tuple[str, int], bytes]  # prebuilt request bytes per (model, rows)
    inputs: dict[tuple[str, int], np.ndarray]


def server_cells(servers: list[str]) -> list[Cell]:
    return [Cell(s, m, rows, c) for s in servers for m in MODELS for rows, c in LOADS]


def ort_cells() -> list[Cell]:
    """Batch 1 and 64, with ONNX Runtime's default threads (0) and with one thread."""
    return [Cell("ort", m, rows, 1, t) for m in MODELS for rows in (1, 64) for t in (0, 1)]


def _send(cell: Cell, rig: Rig, start: float, args: argparse.Namespace) -> Any:
    """Tell the ONNX Runtime worker or the load process to run ``cell`` from ``start``."""
    if cell.server == "ort":
        rows = rig.inputs[(cell.model, cell.rows)]
        duration = min(args.duration, args.ort_duration)
        message = ("run", MODELS[cell.model], cell.threads, rows, start, args.warmup, duration)
        rig.compute.send(message)
        return rig.compute
    port = rig.servers[cell.server].port
    payload = rig.payloads[(cell.model, cell.rows)]
    rig.client.send(("cell", port, payload, cell.concurrency, start, args.warmup, args.duration))
    return rig.client


def run_cell(cell: Cell, rig: Rig, args: argparse.Namespace) -> Attempt:
    """Measure ``cell`` once: its requests; the CPU of the server's tree, the client, the rest."""
    duration = min(args.duration, args.ort_duration) if cell.server == "ort" else args.duration
    start = time.monotonic() + 0.05
    window = (start + args.warmup, start + args.warmup + duration)
    load_average = os.getloadavg()[0]
    conn = _send(cell, rig, start, args)
    pid = rig.compute_pid if cell.server == "ort" else rig.servers[cell.server].pid
    time.sleep(max(0.0, window[0] - time.monotonic()))
    busy0, cpu0, steal0 = machine_busy()[0], process_tree_cpu_seconds(pid), steal_seconds()
    time.sleep(max(0.0, window[1] - time.monotonic()))
    busy1, cpu1, steal1 = machine_busy()[0], process_tree_cpu_seconds(pid), steal_seconds()
    if not conn.poll(args.warmup + duration + REQUEST_TIMEOUT_S + 30):
        raise RuntimeError(f"no answer from the load process for {cell.key}")
    result = conn.recv()
    return Attempt(
        latencies=result["latencies"],
        errors=result["errors"],
        first_error=result.get("first_error"),
        server_cpu_s=cpu1 - cpu0,
        client_cpu_s=result["cpu_s"],
        others_cpu_s=max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - result["cpu_s"]),
        load_average=load_average,
        steal_s=steal1 - steal0,
    )


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def summarize(cell: Cell, duration: float) -> dict[str, Any]:
    """The JSON entry of one cell: the median of its rounds, and every round's values."""
    per_round: dict[str, list[Any]] = {
        key: []
        for key in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request",
                    "server_cores", "client_cores", "others_cores", "steal_cores",
                    "load_average_1m", "errors")
    }  # fmt: skip
    for attempt in cell.rounds:
        p50, p99 = percentiles_ms(attempt.latencies, (50, 99))
        per_round["requests_per_s"].append(round(attempt.requests / duration, 1))
        per_round["p50_ms"].append(round(p50, 4))
        per_round["p99_ms"].append(round(p99, 4))
        if attempt.requests and cell.server != "ort":
            per_round["server_cpu_us_per_request"].append(
                round(1e6 * attempt.server_cpu_s / attempt.requests, 1)
            )
        per_round["server_cores"].append(round(attempt.server_cpu_s / duration, 2))
        per_round["client_cores"].append(round(attempt.client_cpu_s / duration, 2))
        per_round["others_cores"].append(round(attempt.others_cpu_s / duration, 2))
        per_round["steal_cores"].append(round(attempt.steal_s / duration, 2))
        per_round["load_average_1m"].append(round(attempt.load_average, 2))
        per_round["errors"].append(attempt.errors)
    rps = _median(per_round["requests_per_s"])
    out: dict[str, Any] = {
        "server": cell.server,
        "label": LABELS[cell.server],
        "model": cell.model,
        "model_name": MODELS[cell.model],
        "rows": cell.rows,
        "concurrency": cell.concurrency,
    }
    if cell.server == "ort":
        out["threads"] = cell.threads
    out |= {
        "requests_per_s": rps,
        "rows_per_s": None if rps is None else round(rps * cell.rows, 1),
        "p50_ms": _median([v for v in per_round["p50_ms"] if v == v]),  # NaN: no answers
        "p99_ms": _median([v for v in per_round["p99_ms"] if v == v]),
        "errors": sum(per_round["errors"]),
        "rounds": len(cell.rounds),
        "discarded_noisy_attempts": cell.discarded,
        "per_round": per_round,
    }
    if cell.server != "ort":
        out["server_cpu_us_per_request"] = _median(per_round["server_cpu_us_per_request"])
        out["server_cores"] = _median(per_round["server_cores"])
        out["client_cores"] = _median(per_round["client_cores"])  # the load process's CPU
        out["others_cores"] = _median(per_round["others_cores"])
        out["steal_cores"] = _median(per_round["steal_cores"])
    first = next((a.first_error for a in cell.rounds if a.first_error), None)
    if first:
        out["first_error"] = first
    return out
