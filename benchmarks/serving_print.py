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
    columns += ["server CPU us/req", "errors", "others' cores"]
    rows = []
    for model in ("small", "wide"):
        for rows_per, c in LOADS:
            for server in SERVERS:
                cell = find(report, server, model, rows_per, c)
                if cell is not None:
                    name = cell["model_name"]
                    others = number(cell["others_cores"], 2)
                    rows.append(
                        [name, load_name(rows_per, c), LABELS[server], *cell_row(cell), others]
                    )
    print_table(columns, rows)


def _side_by_side_cell(cell: Report | None, measure: str) -> str:
    if cell is None:
        return "-"
    if measure == "req/s (rows/s)":
        return cell_row(cell)[0]
    if measure == "p50 / p99 ms":
        return f"{number(cell['p50_ms'], 2)} / {number(cell['p99_ms'], 2)}"
    if measure == "server CPU us/req":
        return number(cell["server_cpu_us_per_request"])
    return str(cell["errors"])


def print_side_by_side(report: Report) -> None:
    """One column per server, as the serving issue's table: the README's table."""
    servers = [s for s in SERVERS if any(c["server"] == s for c in report["cells"])]
    measures = ["req/s (rows/s)", "p50 / p99 ms", "server CPU us/req"]
    if any(c["errors"] for c in report["cells"]):
        measures.append("errors")
    rows = []
    for model in ("small", "wide"):
        for rows_per, c in LOADS:
            cells = [find(report, server, model, rows_per, c) for server in servers]
            name = next(cell["model_name"] for cell in cells if cell is not None)
            for measure in measures:
                where = f"{name}, {load_name(rows_per, c)}: {measure}"
                rows.append([where, *(_side_by_side_cell(cell, measure) for cell in cells)])
    print("\nside by side (medians of rounds)")
    print_table(["", *servers], rows)


def _print_targets(report: Report) -> None:
    print("\ntargets of the serving issue (this run; per round where both were measured)")
    rows = [
        [name, number(t["value"], 2), t["target"], {True: "yes", False: "NO", None: "-"}[t["met"]],
         ", ".join(number(v, 2) for v in t.get("per_round", [])) or "-"]
        for name, t in report["targets"].items()
    ]  # fmt: skip
    print_table(["target", "value", "rule", "met", "per round"], rows)


def print_report(report: Report) -> None:
    s, machine, software = report["settings"], report["machine"], report["software"]
    load = report["load_average"]
    print(
        f"{machine['cpu_model']}, {machine['logical_cpus']} CPUs ({machine['cores_to_use']} to "
        f"use); onnxruntime {software.get('onnxruntime')}, grpcio {software.get('grpcio')}; "
        f"{s['rounds']} round(s) x {s['duration_s']:g} s per cell; load average before "
        f"{load['before_1_5_15m']}, after {load['after_1_5_15m']}, during cells (1 min) "
        f"{load['cells_1m_min_max']}; other processes' cores (median, max) "
        f"{report['others_cores_median_max']}, hypervisor steal {report['steal_cores_median_max']}"
    )
    for name, why in report["peers"]["skipped"].items():
        print(f"SKIPPED {name}: {why}")
    for name, versions in report["peers"]["software"].items():
        shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "environment")
        print(f"{name}: {shown}")
    _print_ort(report)
    _print_cells(report)
    print_side_by_side(report)
    _print_targets(report)
    sys.stdout.flush()
