"""The picture of ``serving.py``'s report: per model, throughput and p50 against concurrency
(1-row requests) and rows/s of 64-row requests against (a)'s batch-64 ceiling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from serving_cells import CONFIGS, LABELS
from serving_report import Report, find, ort_cell
from serving_workers import MODELS

COLORS = {"null": "0.45", "off": "#dd8452", "on": "#4c72b0", "ort": "#55a868"}


def _series(report: Report, config: str, model: str) -> list[Report]:
    return sorted(
        (c for c in report["cells"] if (c["config"], c["model"], c["rows"]) == (config, model, 1)),
        key=lambda c: c["concurrency"],
    )


def _reference(ax: Any, value: float, data: list[float], text: str, below: bool) -> None:
    """(a) as a dotted line when it fits near the data, else as a note in the corner."""
    low, high = min(data), max(data)
    if low / 3 <= value <= high * 3:
        ax.axhline(value, color=COLORS["ort"], linestyle=":", linewidth=1.3)
        ax.annotate(
            text,
            (0.01, value),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(2, -10 if below else 4),
            fontsize=7,
            color=COLORS["ort"],
        )
    else:
        where = "below" if value < low else "above"
        ax.text(
            0.02,
            0.97,
            f"{text} (far {where} this axis)",
            transform=ax.transAxes,
            va="top",
            fontsize=7,
            color=COLORS["ort"],
        )


def _log_axes(axes: tuple[Any, ...], levels: list[int]) -> None:
    from matplotlib import ticker

    for ax in axes:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.10g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.grid(which="both", alpha=0.25)
        ax.set_xlabel("concurrent requests (closed loop), log scale")


def _one_row_panels(ax_rps: Any, ax_p50: Any, report: Report, model: str, threads: int) -> None:
    """Requests/s and p50 of 1-row requests against concurrency, (a) as a reference line."""
    name = MODELS[model]
    one = ort_cell(report, model, 1, threads)
    rates: list[float] = []
    p50s: list[float] = []
    for config in CONFIGS:
        cells = _series(report, config, model)
        x = [c["concurrency"] for c in cells]
        style = {"color": COLORS[config], "marker": "o", "label": LABELS[config]}
        if config == "null":
            style["linestyle"] = "--"
        rates += [c["requests_per_s"] for c in cells]
        p50s += [c["p50_ms"] for c in cells]
        ax_rps.plot(x, [c["requests_per_s"] for c in cells], **style)
        ax_p50.plot(x, [c["p50_ms"] for c in cells], **style)
        for c in cells:
            ax_rps.annotate(
                f"{c['requests_per_s']:,.0f}",
                (c["concurrency"], c["requests_per_s"]),
                textcoords="offset points",
                xytext={"null": (4, 5), "on": (4, 5), "off": (4, -11)}[config],
                fontsize=7,
                color=COLORS[config],
            )
    text = f"(a) session.run, batch 1, one call at a time: {one['requests_per_s']:,.0f}/s"
    _reference(ax_rps, one["requests_per_s"], rates, text, below=False)
    text = f"(a) session.run, batch 1: {one['p50_ms']:.3f} ms"
    _reference(ax_p50, one["p50_ms"], p50s, text, below=False)
    ax_rps.set_ylabel("requests / s, log scale")
    ax_rps.set_title(f"{name}: throughput, 1-row requests", fontsize=10)
    ax_p50.set_ylabel("p50 latency, ms, log scale")
    ax_p50.set_title(f"{name}: median latency, 1-row requests", fontsize=10)


def _rows64_bars(report: Report, model: str, threads: int) -> tuple[float, list[Any]]:
    ceiling = ort_cell(report, model, 64, threads)["rows_per_s"]
    bars = [("(a)\nbatch 64", ceiling, COLORS["ort"])]
    for c in report["settings"]["rows64_concurrency"]:
        for config in CONFIGS:
            cell = find(report, config, model, 64, c)
            short = {"null": "(b)", "off": "off", "on": "on"}[config]
            bars.append((f"{short}\nc={c}", cell["rows_per_s"], COLORS[config]))
    return ceiling, bars


def _rows64_panel(ax: Any, report: Report, model: str, threads: int) -> None:
    """64-row requests: rows/s against (a)'s batch-64 rows/s."""
    ceiling, bars = _rows64_bars(report, model, threads)
    x = np.arange(len(bars))
    ax.bar(x, [b[1] for b in bars], color=[b[2] for b in bars], width=0.7)
    for i, (_, value, _) in enumerate(bars):
        text = f"{value:,.0f}\n{value / ceiling:.1%}"
        ax.text(i, value * 1.08, text, ha="center", va="bottom", fontsize=7)
    ax.axhline(0.7 * ceiling, color=COLORS["ort"], linestyle="--", linewidth=0.9)
    ax.text(
        len(bars) - 0.5,
        0.7 * ceiling,
        "70% of (a)",
        ha="right",
        va="bottom",
        fontsize=7,
        color=COLORS["ort"],
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
    )
    values = [b[1] for b in bars]
    ax.set_ylim(min(values) / 3, max(values) * 6)
    ax.set_xticks(x, [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("rows / s, log scale (label: share of (a))")
    ax.set_xlabel(
        f"(a): session.run, {threads} thread{'s' if threads > 1 else ''} as in the server; "
        "c: concurrency"
    )
    ax.set_title(f"{MODELS[model]}: throughput, 64-row requests", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)


def _captions(fig: Any, report: Report) -> None:
    lines = [
        f"{'met' if t['met'] else 'MISSED'}: {t['what']}: {t['value']:.3f} "
        f"(target {t['rule']} {t['target']})"
        for t in report["targets"].values()
    ]
    fig.text(0.35, 0.005, "\n".join(lines), fontsize=7.5, va="bottom", family="monospace")
    s, m = report["settings"], report["machine"]
    others = [c["others_cores"] for c in report["cells"] + report["ort"]]
    fig.suptitle(
        f"onnxforge serving, every point from one run: {m['cpu_model']}, {m['logical_cpus']} CPUs "
        f"shared by the server and the load generator; onnxruntime "
        f"{report['software']['onnxruntime']}, grpcio {report['software']['grpcio']}, "
        f"{s['intra_op_num_threads']} intra-op thread(s); {s['rounds']} interleaved rounds x "
        f"{s['duration_s']:g} s per point\nother processes on this shared machine used "
        f"{np.median(others):.2f} cores (median over the points; up to {max(others):.2f}) while "
        "they were measured",
        fontsize=9.5,
    )


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = report["settings"]["intra_op_num_threads"] or 1
    fig, axes = plt.subplots(2, 3, figsize=(16, 10), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    for row, model in enumerate(MODELS):
        ax_rps, ax_p50, ax_rows = axes[row]
        _one_row_panels(ax_rps, ax_p50, report, model, threads)
        _log_axes((ax_rps, ax_p50, ax_rows), report["settings"]["concurrency"])
        bottom, top = ax_rps.get_ylim()
        ax_rps.set_ylim(bottom, top * 1.5)
        _rows64_panel(ax_rows, report, model, threads)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower left", ncol=1, fontsize=9, frameon=False)
    _captions(fig, report)
    fig.tight_layout(rect=(0, 0.085, 1, 0.955))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
