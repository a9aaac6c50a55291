"""What ``serving.py`` prints: its report as Markdown tables and a few lines."""

from __future__ import annotations

import sys

from serving_cells import CONFIGS, LABELS
from serving_report import Report

from onnxforge.bench import print_table


def _print_ort(report: Report) -> None:
    print("\n(a) ONNX Runtime in-process, one call at a time")
    columns = ["model", "threads", "batch", "p50 ms", "p90 ms", "calls/s", "rows/s"]
    rows = [
        [
            c["model_name"],
            str(c["threads"]),
            str(c["rows"]),
            f"{c['p50_ms']:.3f}",
            f"{c['p90_ms']:.3f}",
            f"{c['requests_per_s']:,.0f}",
            f"{c['rows_per_s']:,.0f}",
        ]
        for c in report["ort"]
    ]
    print_table(columns, rows)


SERVER_NAMES = {"null": "(b) do-nothing", "off": "batching off", "on": "batching on"}


def _print_cells(report: Report) -> None:
    print("\n(b) do-nothing gRPC server and onnxforge, closed loop")
    columns = ["model", "rows", "conc", "server", "req/s", "rows/s", "p50 ms", "p90 ms"]
    columns += ["p99 ms", "err", "srv CPU us/req", "rows/run", "others cores"]
    order = {"null": 0, "off": 1, "on": 2}
    cells = sorted(
        report["cells"], key=lambda c: (c["model"], c["rows"], c["concurrency"], order[c["config"]])
    )
    rows = [
        [
            c["model_name"],
            str(c["rows"]),
            str(c["concurrency"]),
            SERVER_NAMES[c["config"]],
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
        for c in cells
    ]
    print_table(columns, rows)


def _print_loaded_memory(m: Report) -> None:
    print("\nmemory (VmRSS)")
    columns = ["server", "model files MiB", "RSS MiB", "over empty MiB"]
    bundled = m["bundled_models"]
    rows = [
        ["onnxforge, empty repository", "0", f"{m['empty_repository']['rss_mib']}", "-"],
        [
            "onnxforge, digits-mlp + wide-mlp fp32",
            f"{m['bench_repository']['model_file_bytes'] / 2**20:.1f}",
            f"{m['on']['rss_mib_loaded']}",
            f"{m['on']['rss_over_empty_mib']}",
        ],
        [
            f"onnxforge, bundled models/ ({len(bundled['models'])} models)",
            f"{bundled['model_file_bytes'] / 2**20:.1f}",
            f"{bundled['rss_mib']}",
            f"{bundled['rss_over_empty_mib']}",
        ],
    ]
    print_table(columns, rows)
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


def _print_memory_under_load(m: Report) -> None:
    columns = ["server (VmRSS MiB)", "loaded", "after each round", "cells min-max", "final"]
    columns.append("peak (HWM)")
    rows = [
        [
            LABELS[config],
            f"{m[config]['rss_mib_loaded']}",
            ", ".join(map(str, m[config]["rss_mib_after_round"])),
            "-".join(map(str, m[config]["rss_mib_min_max_after_cells"])),
            f"{m[config]['rss_mib_final']}",
            f"{m[config]['peak_rss_mib']}",
        ]
        for config in CONFIGS
    ]
    print_table(columns, rows)
    for config in ("off", "on"):
        e = m[config].get("sustained")
        if e:
            print(
                f"sustained load, {LABELS[config]}: {e['requests']:,} requests in "
                f"{e['seconds']:g} s, RSS {e['rss_mib_start']} -> {e['rss_mib_end']} MiB "
                f"(samples {', '.join(map(str, e['rss_mib_samples']))})"
            )


def _print_targets(report: Report) -> None:
    print("\ntargets")
    rows = [
        [name, f"{t['value']:.3f}", f"{t['rule']} {t['target']}", "yes" if t["met"] else "NO"]
        for name, t in report["targets"].items()
    ]
    print_table(["target", "value", "rule", "met"], rows)


def print_report(report: Report) -> None:
    s, machine, software = report["settings"], report["machine"], report["software"]
    print(
        f"{machine['cpu_model']}, {machine['logical_cpus']} CPUs; "
        f"onnxruntime {software['onnxruntime']}, grpcio {software['grpcio']}; "
        f"intra-op threads {s['intra_op_num_threads']}; {s['rounds']} rounds x "
        f"{s['duration_s']:g} s per cell"
    )
    _print_ort(report)
    _print_cells(report)
    _print_loaded_memory(report["memory"])
    _print_memory_under_load(report["memory"])
    _print_targets(report)
    sys.stdout.flush()
