"""What ``quantization.py`` prints (Markdown tables) and draws (sizes and latencies)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.bench import print_table


def _short_ops(ops: dict[str, int]) -> str:
    return ", ".join(
        f"{op.removeprefix('com.microsoft.')}x{n}" if n > 1 else op.removeprefix("com.microsoft.")
        for op, n in ops.items()
    )


def _print_timings(report: dict) -> None:
    settings = report["settings"]
    for threads in settings["threads"]:
        header = ["variant", "MB", "size x fp32"]
        for batch in settings["batch_sizes"]:
            header += [f"b{batch} med", f"b{batch} p90", f"b{batch} x fp32"]
        header.append(f"b{max(settings['batch_sizes'])} rows/s")
        lines = []
        for entry in report["variants"]:
            timings = {t["batch"]: t for t in entry["timings"] if t["threads"] == threads}
            line = [
                entry["label"],
                f"{entry['bytes'] / 1e6:.2f}",
                f"{entry['bytes_ratio_to_fp32']:.3f}",
            ]
            for batch in settings["batch_sizes"]:
                t = timings[batch]
                line += [f"{t['median_ms']:.3f}", f"{t['p90_ms']:.3f}", f"{t['ratio_to_fp32']:.2f}"]
            line.append(f"{timings[max(settings['batch_sizes'])]['rows_per_s']:,.0f}")
            lines.append(line)
        print(f"\nintra_op_num_threads = {threads}")
        print_table(header, lines)


def _print_graphs(report: dict) -> None:
    print("\nwhat ONNX Runtime runs after graph optimization")
    rows = report["variants"][0]["output_check"]["rows"]
    header = ["variant", "operators", "weight values by type", "max abs diff vs fp32"]
    header.append(f"argmax = fp32 ({rows} rows)")
    lines = []
    for entry in report["variants"]:
        weights = ", ".join(f"{k} {v:,}" for k, v in entry["optimized_weight_dtypes"].items())
        check = entry["output_check"]
        lines.append(
            [
                entry["label"],
                _short_ops(entry["optimized_ops"]),
                weights,
                f"{check['max_abs_vs_fp32']:.4f}",
                f"{check['argmax_agreement_vs_fp32']:.3f}",
            ]
        )
    print_table(header, lines)


def print_report(report: dict) -> None:
    flags = [flag for flag, present in report["machine"]["cpu_flags"].items() if present]
    print(
        f"{report['model']} | CPU {report['machine']['cpu_model']} "
        f"({report['machine']['logical_cpus']} logical) | flags: {' '.join(flags)} | "
        f"onnxruntime {report['software']['onnxruntime']}"
    )
    settings = report["settings"]
    print(
        f"{settings['rounds']} rounds x {settings['repeat']} calls per cell, interleaved; "
        f"medians in ms; x fp32 = median / fp32 median in this run"
    )
    _print_timings(report)
    _print_graphs(report)
    sys.stdout.flush()


SIZE_TARGET = 0.27  # int8 files at most this share of the fp32 file


def _size_panel(ax: Any, entries: list[dict], labels: list[str]) -> None:
    """File sizes, with the int8 target as a dashed line."""
    y = np.arange(len(entries))
    sizes = [entry["bytes"] / 1e6 for entry in entries]
    bars = ax.barh(y, sizes, color="#4c72b0")
    for bar, entry in zip(bars, entries, strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {bar.get_width():.1f} MB, {entry['bytes_ratio_to_fp32']:.1%}",
            va="center",
            fontsize=8,
        )
    ax.axvline(sizes[0] * SIZE_TARGET, color="0.4", linestyle="--", linewidth=0.8)
    ax.text(
        sizes[0] * SIZE_TARGET,
        len(entries) - 0.45,
        f" {SIZE_TARGET:.0%} of fp32",
        fontsize=7,
        color="0.3",
        va="bottom",
    )
    ax.set_xlabel("file size, MB (label: share of the fp32 file)")
    ax.set_xlim(0, max(sizes) * 1.45)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title("file size", fontsize=10)


def _latency_bars(
    ax: Any, entries: list[dict], cells: list[tuple[int, int]], settings: dict, plt: Any
) -> float:
    """One bar per (threads, batch) cell and variant: median, a line to p90; the longest p90."""
    batches, thread_counts = settings["batch_sizes"], settings["threads"]
    y = np.arange(len(entries))
    height = 0.84 / len(cells)
    ramps = [plt.get_cmap(name) for name in ("Blues", "Oranges", "Greens", "Purples")]
    longest = 0.0
    for k, (threads, batch) in enumerate(cells):
        ramp = ramps[batches.index(batch) % len(ramps)]
        shade = 0.8 - 0.35 * thread_counts.index(threads) / max(len(thread_counts) - 1, 1)
        timings = [
            next(t for t in entry["timings"] if (t["threads"], t["batch"]) == (threads, batch))
            for entry in entries
        ]
        medians = [t["median_ms"] for t in timings]
        p90s = [t["p90_ms"] for t in timings]
        offset = (k - (len(cells) - 1) / 2) * height
        label = f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}"
        ax.barh(y + offset, medians, height, color=ramp(shade), label=label)
        ax.hlines(y + offset, medians, p90s, color="0.25", linewidth=0.6)
        for row, (median, p90, t) in enumerate(zip(medians, p90s, timings, strict=True)):
            text = (
                f" {median:.3g} ms" if row == 0 else f" {median:.3g} ms  x{t['ratio_to_fp32']:.2f}"
            )
            ax.text(max(median, p90), y[row] + offset, text, va="center", fontsize=6)
            longest = max(longest, p90)
    return longest


def _time_panel(ax: Any, entries: list[dict], cells: list[tuple[int, int]], report: dict) -> None:
    import matplotlib.pyplot as plt

    longest = _latency_bars(ax, entries, cells, report["settings"], plt)
    ax.set_xscale("log")
    ax.set_xlim(right=longest * 3.5)
    ax.set_xlabel(
        "latency per call, ms, log scale (bar: median, line: to p90; label: median, "
        "x median / fp32 median)"
    )
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.set_title("ONNX Runtime latency, CPUExecutionProvider", fontsize=10)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = report["variants"]
    labels = [entry["label"].replace(" ", "\n", 1) for entry in entries]
    settings = report["settings"]
    cells = [
        (threads, batch) for batch in settings["batch_sizes"] for threads in settings["threads"]
    ]
    fig, (ax_size, ax_time) = plt.subplots(
        1,
        2,
        figsize=(14, 1.6 + 0.7 * len(entries)),
        sharey=True,
        gridspec_kw={"width_ratios": [1, 2.2]},
    )
    _size_panel(ax_size, entries, labels)
    _time_panel(ax_time, entries, cells, report)
    handles, names = ax_time.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(cells), fontsize=8, frameon=False)
    machine = report["machine"]
    flags = [flag for flag, present in machine["cpu_flags"].items() if present]
    fig.suptitle(
        f"{report['model']}, every variant measured side by side: {machine['cpu_model']}, "
        f"{machine['logical_cpus']} CPUs ({' '.join(flags)}), "
        f"onnxruntime {report['software']['onnxruntime']}, "
        f"{settings['rounds']} interleaved rounds x {settings['repeat']} calls per bar",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
