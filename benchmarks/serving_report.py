"""``serving.py``'s report: assembled from what was measured, and its targets computed."""

from __future__ import annotations

import argparse
import datetime
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving_cells import CONFIGS, LABELS, Cell, summarize
from serving_workers import MODELS

from onnxforge.bench import machine_info, software_versions

Report = dict[str, Any]


def find(report: Report, config: str, model: str, rows: int, concurrency: int) -> Report:
    for cell in report["cells"]:
        if (cell["config"], cell["model"], cell["rows"], cell["concurrency"]) == (
            config,
            model,
            rows,
            concurrency,
        ):
            return cell
    raise KeyError((config, model, rows, concurrency))


def ort_cell(report: Report, model: str, rows: int, threads: int) -> Report:
    return next(
        c for c in report["ort"] if (c["model"], c["rows"], c["threads"]) == (model, rows, threads)
    )


# ----------------------------------------------------------------------------- targets


def _target(value: float, target: float, higher: bool, **detail: Any) -> dict[str, Any]:
    met = value >= target if higher else value <= target
    return {
        "value": round(value, 3),
        "target": target,
        "rule": ">=" if higher else "<=",
        "met": bool(met),
        **detail,
    }


def _paired(a: Report, b: Report, key: str = "per_round_requests_per_s") -> list[float]:
    return [round(x / y, 3) if y else float("nan") for x, y in zip(a[key], b[key], strict=True)]


def _c1_latency(report: Report, model: str, threads: int) -> dict[str, Any]:
    ours, null = find(report, "on", model, 1, 1), find(report, "null", model, 1, 1)
    off = find(report, "off", model, 1, 1)
    compute = ort_cell(report, model, 1, threads)["p50_ms"]
    return _target(
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


def _wide_c32(report: Report) -> dict[str, Any]:
    on, off = find(report, "on", "wide", 1, 32), find(report, "off", "wide", 1, 32)
    null = find(report, "null", "wide", 1, 32)
    return {
        "wide_c32_batching_on_vs_off": _target(
            on["requests_per_s"] / off["requests_per_s"],
            2.0,
            higher=True,
            what="wide-mlp, 1 row, concurrency 32: requests/s batching on / batching off",
            on_requests_per_s=on["requests_per_s"],
            off_requests_per_s=off["requests_per_s"],
            per_round=_paired(on, off),
        ),
        "wide_c32_on_vs_framework": _target(
            on["requests_per_s"] / null["requests_per_s"],
            0.6,
            higher=True,
            what="wide-mlp, 1 row, concurrency 32: requests/s batching on / (b)",
            on_requests_per_s=on["requests_per_s"],
            framework_requests_per_s=null["requests_per_s"],
            per_round=_paired(on, null),
        ),
    }


def _rows64(report: Report, model: str, threads: int) -> dict[str, Any]:
    ort64 = ort_cell(report, model, 64, threads)
    ceiling = ort64["rows_per_s"]
    on = find(report, "on", model, 64, 1)
    others = {
        f"{config}_c{c}": round(find(report, config, model, 64, c)["rows_per_s"] / ceiling, 3)
        for config in ("on", "off")
        for c in report["settings"]["rows64_concurrency"]
    }
    return _target(
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


def targets(report: Report) -> dict[str, Any]:
    """Each target: its value, the bound, met or not, and the numbers behind it."""
    threads = report["settings"]["intra_op_num_threads"] or 1
    out: dict[str, Any] = {
        f"c1_p50_vs_framework_{model}": _c1_latency(report, model, threads) for model in MODELS
    }
    if 32 in report["settings"]["concurrency"]:
        out |= _wide_c32(report)
    for model in MODELS:
        out[f"rows64_vs_ort_{model}"] = _rows64(report, model, threads)
    return out


# ----------------------------------------------------------------------------- assembling


def settings(args: argparse.Namespace, cells: list[Cell], waits: list[float]) -> dict[str, Any]:
    return {
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
    }


def models_section(
    repo: Path, payloads: dict[tuple[str, int], bytes], responses: dict[tuple[str, int], bytes]
) -> dict[str, Any]:
    return {
        key: {
            "name": MODELS[key],
            "file_bytes": (repo / MODELS[key] / "1" / "model.onnx").stat().st_size,
            "request_bytes": {str(n): len(payloads[(key, n)]) for n in (1, 64)},
            "response_bytes": {str(n): len(responses[(MODELS[key], n)]) for n in (1, 64)},
        }
        for key in MODELS
    }


def _mib(kb: int) -> float:
    return round(kb / 1024, 1)


def memory_under_load(
    config: str,
    cells: list[Cell],
    loaded: dict[str, int],
    rounds: list[int],
    final: dict[str, int],
) -> dict[str, Any]:
    """A server's RSS: loaded, after every cell and round, at the end; its peak."""
    rss_cells = [kb for c in cells if c.config == config for kb in c.rss_kb_after]
    by_kind: dict[str, list[int]] = defaultdict(list)
    for c in cells:
        if c.config == config and c.rss_kb_after:
            by_kind[f"rows{c.rows}_c{c.concurrency}"].append(c.rss_kb_after[-1])
    served = sum(len(x) for c in cells if c.config == config for x in c.latencies)
    return {
        "label": LABELS[config],
        "rss_mib_loaded": _mib(loaded.get("VmRSS", 0)),
        "peak_rss_mib_loaded": _mib(loaded.get("VmHWM", 0)),
        "rss_mib_after_round": [_mib(kb) for kb in rounds],
        "rss_mib_final": _mib(final.get("VmRSS", 0)),
        "peak_rss_mib": _mib(final.get("VmHWM", 0)),
        "rss_mib_min_max_after_cells": [_mib(min(rss_cells)), _mib(max(rss_cells))],
        "rss_mib_after_last_cell_of_kind": {k: _mib(v[0]) for k, v in sorted(by_kind.items())},
        "growth_mib_first_to_last_round": _mib(rounds[-1] - rounds[0]),
        "requests_measured": served,
        "threads": final.get("Threads"),
    }


def rss_over_empty(memory: dict[str, Any]) -> None:
    """What loading the models added to an empty server's RSS, in all and per MiB of files."""
    base = memory["empty_repository"]["rss_mib"]
    for key, files in (
        ("on", memory["bench_repository"]["model_file_bytes"]),
        ("bundled_models", memory["bundled_models"]["model_file_bytes"]),
    ):
        rss = memory[key]["rss_mib_loaded" if key == "on" else "rss_mib"]
        memory[key]["rss_over_empty_mib"] = round(rss - base, 1)
        memory[key]["rss_over_empty_per_file_mib"] = round((rss - base) / (files / 2**20), 2)


def machine() -> dict[str, Any]:
    info = machine_info()
    keys = ("cpu_model", "logical_cpus", "usable_cpus", "cgroup_cpu_quota", "cores_to_use")
    return {key: info[key] for key in (*keys, "platform")}


@dataclass
class Measured:
    """What the rounds measured, for the report."""

    cells: list[Cell]
    rss_rounds: dict[str, list[int]]
    sustained: dict[str, dict[str, Any]]
    final: dict[str, dict[str, int]]
    quiet_waits: list[float]  # seconds waited for quiet before each attempt


def make_report(args: argparse.Namespace, prepared: dict[str, Any], done: Measured) -> dict:
    summaries = [summarize(cell) for cell in done.cells]
    report: dict[str, Any] = {
        "benchmark": "serving",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "software": software_versions(),
        "settings": settings(args, done.cells, done.quiet_waits),
        "models": prepared["models"],
        "answer_check_max_abs_diff": prepared["answer_check_max_abs_diff"],
        "cells": [s for s in summaries if s["config"] != "ort"],
        "ort": [s for s in summaries if s["config"] == "ort"],
    }
    memory = prepared["memory"]
    memory["bench_repository"] = {
        "models": list(MODELS.values()),
        "model_file_bytes": sum(m["file_bytes"] for m in report["models"].values()),
    }
    for config in CONFIGS:
        memory[config] = memory_under_load(
            config,
            done.cells,
            prepared["loaded"][config],
            done.rss_rounds[config],
            done.final[config],
        )
        if config in done.sustained:
            memory[config]["sustained"] = done.sustained[config]
    rss_over_empty(memory)
    report["memory"] = memory
    report["targets"] = targets(report)
    return report
