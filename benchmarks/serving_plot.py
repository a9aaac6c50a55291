"""The picture of ``serving.py``'s report: per model (rows) throughput, p50 latency and
server CPU per request (columns), a group of bars per load, a bar per server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from serving_cells import LABELS, LOADS, SERVERS
from serving_print import load_name
from serving_report import Report, find, ort_ceiling
from serving_workers import MODELS

COLORS = {
    "onnxforge": "#4c72b0",
    "onnxforge-grpc-threads": "#6a8fd0",
    "onnxforge-threads-1": "#8aa9e0",
    "onnxforge-spinning": "#a9c1ea",
    "onnxforge-workers": "#c8d8f2",
    "onnxforge-no-pin-loop": "#2a4a80",
    "null-aio": "0.55",
    "null-aio-uvloop": "0.45",
    "null-sync": "0.3",
    "kserve": "#dd8452",
    "mlserver": "#55a868",
    "mlserver-batching": "#8fd19e",
    "mlserver-inline": "#2d6a3e",
    "mlserver-inline-batching": "#c2e8c9",
}
METRICS = (
    ("rows_per_s", "rows / s (= req/s for 1-row requests), log scale", True),
    ("p50_ms", "p50 latency, ms, log scale", True),
    ("server_cpu_us_per_request", "server CPU per request, us (process tree), log scale", True),
)


def _panel(ax: Any, report: Report, model: str, key: str, label: str) -> None:
    servers = [s for s in SERVERS if any(c["server"] == s for c in report["cells"])]
    width = 0.8 / max(1, len(servers))
    for i, server in enumerate(servers):
        values = []
        for rows, c in LOADS:
            cell = find(report, server, model, rows, c)
            values.append((cell or {}).get(key) or np.nan)
        x = np.arange(len(LOADS)) + (i - (len(servers) - 1) / 2) * width
        ax.bar(x, values, width, color=COLORS[server], label=LABELS[server])
        for xi, value in zip(x, values, strict=True):
            if value == value:  # not NaN
                text = f"{value:,.0f}" if value >= 10 else f"{value:.2f}"
                ax.text(xi, value * 1.05, text, ha="center", va="bottom", fontsize=6, rotation=90)
    if key == "rows_per_s":
        ceiling = ort_ceiling(report, model, LOADS[-1][0])
        if ceiling is not None:
            x = len(LOADS) - 1
            ax.hlines(
                ceiling["rows_per_s"], x - 0.45, x + 0.45, colors="k", linestyles=":", zorder=3
            )
            text = f"ORT in-process, batch 64: {ceiling['rows_per_s']:,.0f}"
            box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1}
            where = (x + 0.45, ceiling["rows_per_s"] * 1.15)
            ax.text(*where, text, ha="right", va="bottom", fontsize=7, bbox=box)
    ax.set_yscale("log")
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * 4)
    ax.set_xticks(np.arange(len(LOADS)), [load_name(r, c) for r, c in LOADS], fontsize=8)
    ax.set_ylabel(label, fontsize=8)
    ax.set_title(MODELS[model], fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    for row, model in enumerate(MODELS):
        for column, (key, label, _) in enumerate(METRICS):
            _panel(axes[row][column], report, model, key, label)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=9, frameon=False)
    s, m, load = report["settings"], report["machine"], report["load_average"]
    skipped = ", ".join(report["peers"]["skipped"]) or "none"
    fig.suptitle(
        f"Serving side by side, one run: {m['cpu_model']}, {m['logical_cpus']} CPUs shared by "
        f"the servers and the load generator; onnxruntime {report['software'].get('onnxruntime')};"
        f" median of {s['rounds']} round(s) x {s['duration_s']:g} s per bar\n1-minute load "
        f"average {load['before_1_5_15m'][0]} before, {load['cells_1m_min_max']} during the "
        f"cells (min, max); peers skipped: {skipped}",
        fontsize=9.5,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
