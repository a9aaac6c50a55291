"""What ``serving.py`` prints: its report as Markdown tables and a few lines."""

from __future__ import annotations

import sys

from serving_cells import LABELS, LOADS, SERVERS
from serving_report import Report, find

from onnxforge.bench import print_table
from onnxforge.bench.report import number


def load_name(rows: int, concurrency: int) -> str:
    plural = "s" if concurrency > 1 else ""
    return f"{rows} row{'s' if rows > 1 else ''} x {concurrency} client{plural}"


def _print_ort(report: Report) -> None:
    print("\nONNX Runtime in-process, one session.run at a time (median of rounds)")
    columns = ["model", "threads", "batch", "p50 ms", "calls/s", "rows/s"]
    rows = [
        [c["model_name"], str(c["threads"] or "default"), str(c["rows"]), number(c["p50_ms"], 3),
         number(c["requests_per_s"]), number(c["rows_per_s"])]
        for c in report["ort"]
    ]  # fmt: skip
    print_table(columns, rows)


def cell_row(cell: Report) -> list[str]:
    """req/s (rows/s), p50, p99, server CPU per request, errors."""
    rate = number(cell["requests_per_s"])
    if cell["rows"] > 1:
        rate += f" ({number(cell['rows_per_s'])})"
    return [rate, number(cell["p50_ms"], 2), number(cell["p99_ms"], 2),
            number(cell["server_cpu_us_per_request"]), str(cell["errors"])]  # fmt: skip


def _print_cells(report: Report) -> None:
    print("\nclosed loop, median of rounds; req/s (rows/s); server CPU over its process tree")
    columns = ["model", "load", "server", "req/s (rows/s)", "p50 ms", "p99 ms"]
    columns += ["server CPU us/req", "errors"]
    rows = []
    for model in ("small", "wide"):
        for rows_per, c in LOADS:
            for server in SERVERS:
                cell = find(report, server, model, rows_per, c)
                if cell is not None:
                    name = cell["model_name"]
                    rows.append([name, load_name(rows_per, c), LABELS[server], *cell_row(cell)])
    print_table(columns, rows)


def _print_targets(report: Report) -> None:
    print("\ntargets of the serving issue (this run)")
    rows = [
        [name, number(t["value"], 2), t["target"], {True: "yes", False: "NO", None: "-"}[t["met"]]]
        for name, t in report["targets"].items()
    ]
    print_table(["target", "value", "rule", "met"], rows)


def print_report(report: Report) -> None:
    s, machine, software = report["settings"], report["machine"], report["software"]
    load = report["load_average"]
    print(
        f"{machine['cpu_model']}, {machine['logical_cpus']} CPUs ({machine['cores_to_use']} to "
        f"use); onnxruntime {software.get('onnxruntime')}, grpcio {software.get('grpcio')}; "
        f"{s['rounds']} round(s) x {s['duration_s']:g} s per cell; load average before "
        f"{load['before_1_5_15m']}, after {load['after_1_5_15m']}, during cells (1 min) "
        f"{load['cells_1m_min_max']}"
    )
    for name, why in report["peers"]["skipped"].items():
        print(f"SKIPPED {name}: {why}")
    for name, versions in report["peers"]["software"].items():
        shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "environment")
        print(f"{name}: {shown}")
    _print_ort(report)
    _print_cells(report)
    _print_targets(report)
    sys.stdout.flush()
