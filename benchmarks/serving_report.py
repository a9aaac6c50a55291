"""``serving.py``'s report: the medians of every cell, and the ratios the serving issue
sets as targets (onnxforge against the peers, the floors and in-process ONNX Runtime)."""

from __future__ import annotations

import argparse
import datetime
import statistics
from typing import Any

from serving_cells import LABELS, LOADS, VARIANTS, Cell, summarize
from serving_peers import MLSERVER
from serving_workers import MODELS

from onnxforge.bench import machine_info, software_versions

Report = dict[str, Any]


def find(report: Report, server: str, model: str, rows: int, concurrency: int) -> Report | None:
    for cell in report["cells"]:
        if (cell["server"], cell["model"], cell["rows"], cell["concurrency"]) == (
            server,
            model,
            rows,
            concurrency,
        ):
            return cell
    return None


def ort_ceiling(report: Report, model: str, rows: int) -> Report | None:
    """The in-process cell with the most rows/s at this batch size (of the thread counts)."""
    cells = [c for c in report["ort"] if (c["model"], c["rows"]) == (model, rows)]
    return max(cells, key=lambda c: c["rows_per_s"] or 0.0, default=None)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if ours and theirs else None


def _target(value: float | None, bound: float, higher: bool, what: str, **detail: Any) -> Report:
    met = None if value is None else (value >= bound if higher else value <= bound)
    rule = ">=" if higher else "<="
    return {"what": what, "value": value, "target": f"{rule} {bound}", "met": met, **detail}


def _per_round(ours: Report, theirs: Report, key: str = "requests_per_s") -> list[float | None]:
    """The ratio round by round (the two were measured in the same round)."""
    pairs = zip(ours["per_round"][key], theirs["per_round"][key], strict=False)
    return [_ratio(a, b) for a, b in pairs]


def _best_mlserver(report: Report, model: str, rows: int, c: int) -> Report | None:
    """MLServer's best configuration measured (of batching, worker process) for this cell."""
    cells = [find(report, s, model, rows, c) for s in MLSERVER]
    present = [cell for cell in cells if cell is not None and cell["requests_per_s"]]
    return max(present, key=lambda cell: cell["requests_per_s"], default=None)


def _against_peers(report: Report) -> dict[str, Any]:
    """Throughput ratios to KServe and MLServer (its best configuration), 1-row requests."""
    wants = {  # (model, concurrency): (times KServe, times MLServer)
        ("small", 1): (1.25, 2.0),
        ("small", 32): (1.25, 2.0),
        ("wide", 1): (1.0, 1.0),
        ("wide", 32): (2.5, 3.5),
    }
    out: dict[str, Any] = {}
    for (model, c), (kserve_times, mlserver_times) in wants.items():
        ours = find(report, "onnxforge", model, 1, c)
        if ours is None:
            continue
        rps = ours["requests_per_s"]
        for peer, times, theirs in (
            ("kserve", kserve_times, find(report, "kserve", model, 1, c)),
            ("mlserver", mlserver_times, _best_mlserver(report, model, 1, c)),
        ):
            if theirs is None:
                continue
            out[f"{model}_c{c}_vs_{peer}"] = _target(
                _ratio(rps, theirs["requests_per_s"]),
                times,
                higher=True,
                what=f"{MODELS[model]}, 1-row requests, {c} client(s): onnxforge req/s / "
                f"{LABELS[theirs['server']]} req/s",
                onnxforge=rps,
                peer=theirs["requests_per_s"],
                peer_server=theirs["server"],
                per_round=_per_round(ours, theirs),
            )
    return out


def _floors(report: Report) -> dict[str, Any]:
    """The small model against the do-nothing servers: CPU per request and c=1 latency."""
    out: dict[str, Any] = {}
    ours32 = find(report, "onnxforge", "small", 1, 32)
    floors = [find(report, s, "small", 1, 32) for s in ("null-aio", "null-aio-uvloop", "null-sync")]
    floors = [f for f in floors if f is not None and f["server_cpu_us_per_request"]]
    if ours32 is not None and floors:
        cheapest = min(floors, key=lambda f: f["server_cpu_us_per_request"])
        out["small_c32_cpu_vs_cheapest_floor"] = _target(
            _ratio(ours32["server_cpu_us_per_request"], cheapest["server_cpu_us_per_request"]),
            1.5,
            higher=False,
            what="small-mlp, 32 clients: onnxforge server CPU per request / the cheapest "
            "do-nothing server's",
            onnxforge_us=ours32["server_cpu_us_per_request"],
            floor_us=cheapest["server_cpu_us_per_request"],
            floor_server=cheapest["server"],
        )
    ours1, aio1 = find(report, "onnxforge", "small", 1, 1), find(report, "null-aio", "small", 1, 1)
    if ours1 is not None and aio1 is not None:
        out["small_c1_p50_vs_null_aio"] = _target(
            _ratio(ours1["p50_ms"], aio1["p50_ms"]),
            1.2,
            higher=False,
            what="small-mlp, 1 client: onnxforge p50 / the do-nothing grpc.aio server's p50",
            onnxforge_ms=ours1["p50_ms"],
            floor_ms=aio1["p50_ms"],
        )
    return out


def _rows64(report: Report) -> dict[str, Any]:
    """64-row requests (4 clients): onnxforge rows/s against in-process ONNX Runtime's best."""
    out: dict[str, Any] = {}
    rows, c = LOADS[-1]
    for model in MODELS:
        ours, ceiling = find(report, "onnxforge", model, rows, c), ort_ceiling(report, model, rows)
        if ours is None or ceiling is None:
            continue
        out[f"{model}_rows64_vs_ort"] = _target(
            _ratio(ours["rows_per_s"], ceiling["rows_per_s"]),
            0.85,
            higher=True,
            what=f"{MODELS[model]}, {rows}-row requests, {c} clients: onnxforge rows/s / ONNX "
            f"Runtime in-process rows/s at batch {rows} (its best thread count: "
            f"{ceiling['threads'] or 'default'})",
            onnxforge=ours["rows_per_s"],
            ort=ceiling["rows_per_s"],
        )
    return out


def _flags(report: Report) -> dict[str, Any]:
    """Each load: the best flag variant's throughput over the defaults' (at most 1.1)."""
    out: dict[str, Any] = {}
    for model in MODELS:
        for rows, c in LOADS:
            ours = find(report, "onnxforge", model, rows, c)
            variants = [find(report, name, model, rows, c) for name in VARIANTS]
            measured = [v for v in variants if v is not None and v["requests_per_s"]]
            if ours is None or not measured:
                continue
            best = max(measured, key=lambda cell: cell["requests_per_s"])
            out[f"{model}_rows{rows}_c{c}_best_flag_vs_defaults"] = _target(
                _ratio(best["requests_per_s"], ours["requests_per_s"]),
                1.1,
                higher=False,
                what=f"{MODELS[model]}, {rows}-row requests, {c} client(s): the best "
                "flag variant's req/s / the defaults'",
                best=best["server"],
                defaults=ours["requests_per_s"],
                variant=best["requests_per_s"],
                per_round=_per_round(best, ours),
            )
    return out


def settings(args: argparse.Namespace, cells: list[Cell], waits: list[float]) -> Report:
    return {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "ort_duration_s": min(args.duration, args.ort_duration),
        "loads": [{"rows": rows, "concurrency": c} for rows, c in LOADS],
        "servers": args.servers,
        "client": "one asyncio process, grpc.aio, closed loop, one channel per server, "
        "prebuilt request bytes, answers not decoded",
        "order": "servers alternate between rounds (forward, then backward); medians of rounds",
        "server_cpu": "user+system CPU of the server's process tree over each measured window",
        "quiet_cores": args.quiet_cores,
        "quiet_wait_s_total": round(sum(waits), 1),
        "max_others_cores": args.max_others,
        "retries": args.retries,
        "discarded_noisy_attempts": sum(c.discarded for c in cells),
        "quick": args.quick,
    }


def make_report(
    args: argparse.Namespace,
    prepared: Report,
    cells: list[Cell],
    waits: list[float],
    load: dict[str, Any],
) -> Report:
    summaries = [summarize(cell, cell_duration(args, cell)) for cell in cells]
    flat = [v for s in summaries for v in s["per_round"]["load_average_1m"]]
    steal = [v for s in summaries for v in s["per_round"]["steal_cores"]]
    others = [v for s in summaries for v in s["per_round"]["others_cores"]]
    report: Report = {
        "benchmark": "serving",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "software": software_versions(),
        "load_average": {
            "before_1_5_15m": [round(v, 2) for v in load["before"]],
            "after_1_5_15m": [round(v, 2) for v in load["after"]],
            "cells_1m_min_max": [min(flat), max(flat)] if flat else None,
        },
        # What other processes and (on a VM) other guests took while cells were measured.
        "others_cores_median_max": [round(statistics.median(others), 2), max(others)],
        "steal_cores_median_max": [round(statistics.median(steal), 2), max(steal)],
        "settings": settings(args, cells, waits),
        **prepared,
        "cells": [s for s in summaries if s["server"] != "ort"],
        "ort": [s for s in summaries if s["server"] == "ort"],
    }
    report["targets"] = _against_peers(report) | _floors(report) | _rows64(report) | _flags(report)
    return report


def cell_duration(args: argparse.Namespace, cell: Cell) -> float:
    return min(args.duration, args.ort_duration) if cell.server == "ort" else args.duration
