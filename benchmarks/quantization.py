"""Size and speed of every variant of one spec, measured side by side in ONNX Runtime.

    python benchmarks/quantization.py                      # the wide example, about a minute
    python benchmarks/quantization.py --rounds 20 --threads 1 --per-channel off

Builds the spec's fp32 model, makes the fp16, int8-dynamic and int8-static variants (the int8
ones once per combination of ``per_channel`` and ``reduce_range`` asked for), and times
``session.run`` at each batch size and thread count. The machine may be shared and noisy, so
variants are interleaved: each round runs every (variant, batch) cell a few times in a freshly
shuffled order, and drift hits all of them alike. Ratios to fp32 come from the same run.

For each variant the script also saves the graph ONNX Runtime actually runs after its graph
optimizations (``SessionOptions.optimized_model_filepath``) and records its operator types and
the element types of its weights: which fused kernel the int8 MatMuls became, and whether an
fp16 file still computes in fp16.

Writes a JSON file and a PNG (file sizes; latency per batch size and thread count) and prints a
table. Needs matplotlib for the PNG (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxforge import builder
from onnxforge.builder.quantize import QuantizeOptions, quantize
from onnxforge.builder.verify import sample_inputs

CALIBRATION_ROWS = 512
CALIBRATION_SEED = 1
INPUT_SEED = 2  # timing and check rows: drawn apart from the calibration rows
CHECK_ROWS = 1024  # rows for the output check against fp32 (the timing rows are the first ones)
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "f16c",
    "avx512_fp16",
    "avx512_bf16",
)


@dataclass
class Config:
    """One file to time: a variant and, for int8, its quantization options."""

    variant: str
    per_channel: bool = False
    reduce_range: bool = False
    model: bytes = b""
    ops: dict[str, int] = field(default_factory=dict)
    weight_dtypes: dict[str, int] = field(default_factory=dict)
    check: dict[str, float] = field(default_factory=dict)

    @property
    def int8(self) -> bool:
        return self.variant.startswith("int8")

    @property
    def label(self) -> str:
        if not self.int8:
            return self.variant
        options = [
            "per-channel" if self.per_channel else "per-tensor",
            "reduce-range" if self.reduce_range else "full-range",
        ]
        return f"{self.variant} {' '.join(options)}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = builder.load_spec(_find(args.spec))
    except builder.OnnxforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    fp32 = builder.build(spec)
    calibration = sample_inputs(spec, CALIBRATION_ROWS, seed=CALIBRATION_SEED)
    configs = make_configs(fp32, calibration, args)

    rows = sample_inputs(spec, max(CHECK_ROWS, *args.batch_sizes), seed=INPUT_SEED)
    feeds = {batch: {spec.input_name: rows[:batch]} for batch in args.batch_sizes}
    for config in configs:
        config.ops, config.weight_dtypes = optimized_graph(config.model)
    check_outputs(configs, {spec.input_name: rows})

    print(
        f"{spec.name}: {len(configs)} files, batch sizes {args.batch_sizes}, threads "
        f"{args.threads}, {args.rounds} rounds x {args.repeat} calls per cell "
        f"(warm-up {args.warmup})",
        file=sys.stderr,
    )
    started = time.perf_counter()
    samples = measure(configs, feeds, args)
    elapsed = time.perf_counter() - started

    report = make_report(spec, args, configs, samples, elapsed)
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}", file=sys.stderr)
    if args.plot is not None:
        plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="models/wide-mlp/spec.yaml", help="layer spec")
    parser.add_argument("--rounds", type=int, default=300, help="interleaved rounds (default 300)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed calls per cell per round (default 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="untimed calls per cell first (default 10)"
    )
    parser.add_argument(
        "--threads",
        type=_int_list,
        default=[1, 2],
        help="intra-op thread counts, comma-separated (default 1,2)",
    )
    parser.add_argument(
        "--batch-sizes", type=_int_list, default=[1, 64], help="comma-separated (default 1,64)"
    )
    parser.add_argument(
        "--variants",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        default=["fp16", "int8-dynamic", "int8-static"],
        help="variants besides fp32 (default fp16,int8-dynamic,int8-static)",
    )
    for name in ("per-channel", "reduce-range"):
        parser.add_argument(
            f"--{name}",
            choices=["off", "on", "both"],
            default="both",
            help=f"int8 {name.replace('-', '_')} setting(s) to build and time (default both)",
        )
    parser.add_argument(
        "--method", default="minmax", help="int8-static calibration method (default minmax)"
    )
    parser.add_argument(
        "--spin",
        action="store_true",
        help="let ONNX Runtime's idle worker threads spin (its default); off here because the "
        "spinning pool of the session timed last can keep a core busy while the next one runs",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the order within rounds")
    parser.add_argument("--json", type=Path, default=here / "quantization.json")
    parser.add_argument(
        "--plot", type=Path, default=here / "quantization.png", help="PNG path ('' for none)"
    )
    args = parser.parse_args(argv)
    if str(args.plot) in ("", "."):
        args.plot = None
    if args.rounds < 1 or args.repeat < 1 or args.warmup < 0:
        parser.error("--rounds and --repeat must be >= 1, --warmup >= 0")
    unknown = set(args.variants) - {"fp16", "int8-dynamic", "int8-static"}
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    return args


def _find(spec: str) -> Path:
    """``spec`` as given, or relative to the repository root when run from elsewhere."""
    path = Path(spec)
    if path.exists() or path.is_absolute():
        return path
    beside = Path(__file__).resolve().parent.parent / path
    return beside if beside.exists() else path


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _settings(choice: str) -> list[bool]:
    return {"off": [False], "on": [True], "both": [False, True]}[choice]


def make_configs(
    fp32: onnx.ModelProto, calibration: np.ndarray, args: argparse.Namespace
) -> list[Config]:
    configs = [Config("fp32", model=fp32.SerializeToString())]
    for variant in args.variants:
        if not variant.startswith("int8"):
            model = quantize(fp32, variant, calibration)
            configs.append(Config(variant, model=model.SerializeToString()))
            continue
        for per_channel in _settings(args.per_channel):
            for reduce_range in _settings(args.reduce_range):
                options = QuantizeOptions(
                    method=args.method, per_channel=per_channel, reduce_range=reduce_range
                )
                model = quantize(fp32, variant, calibration, options)
                configs.append(
                    Config(variant, per_channel, reduce_range, model.SerializeToString())
                )
    return configs


def session(
    model: bytes, threads: int, spin: bool = False, optimized: Path | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the "hardware specific optimizations" note when saving
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def optimized_graph(model: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """Operator types and weight element types (count of values) of what ORT runs."""
    with tempfile.TemporaryDirectory(prefix="onnxforge-bench-") as folder:
        path = Path(folder) / "optimized.onnx"
        session(model, threads=1, optimized=path)
        graph = onnx.load(str(path)).graph
    ops = collections.Counter(
        op if node.domain in ("", "ai.onnx") else f"{node.domain}.{op}"
        for node in graph.node
        for op in [node.op_type]
    )
    dtypes: collections.Counter[str] = collections.Counter()
    for tensor in graph.initializer:
        dtypes[onnx.TensorProto.DataType.Name(tensor.data_type)] += int(np.prod(tensor.dims))
    return dict(ops), dict(dtypes)


def check_outputs(configs: list[Config], feed: dict[str, np.ndarray]) -> None:
    """How far each variant's first output is from fp32's (a sanity check, not a budget)."""
    want = session(configs[0].model, threads=1).run(None, feed)[0]
    for config in configs:
        got = session(config.model, threads=1).run(None, feed)[0]
        config.check = {
            "max_abs_vs_fp32": float(np.max(np.abs(got.astype(np.float64) - want))),
            "argmax_agreement_vs_fp32": float(np.mean(got.argmax(-1) == want.argmax(-1))),
            "rows": len(got),
        }


Cell = tuple[int, int, int]  # (threads, batch, config index)


def measure(
    configs: list[Config], feeds: dict[int, dict[str, np.ndarray]], args: argparse.Namespace
) -> dict[Cell, list[list[float]]]:
    """Seconds per call: samples[(threads, batch, config)][round] = [repeat calls]."""
    sessions = {
        (threads, index): session(config.model, threads, spin=args.spin)
        for threads in args.threads
        for index, config in enumerate(configs)
    }
    cells = [
        (threads, batch, index)
        for threads in args.threads
        for batch in feeds
        for index in range(len(configs))
    ]
    for threads, batch, index in cells:
        run = sessions[threads, index].run
        for _ in range(args.warmup):
            run(None, feeds[batch])
    rng = np.random.default_rng(args.seed)
    samples: dict[Cell, list[list[float]]] = {cell: [] for cell in cells}
    clock = time.perf_counter
    for _ in range(args.rounds):
        for position in rng.permutation(len(cells)):
            threads, batch, index = cells[position]
            run, feed = sessions[threads, index].run, feeds[batch]
            calls = []
            for _ in range(args.repeat):
                start = clock()
                run(None, feed)
                calls.append(clock() - start)
            samples[threads, batch, index].append(calls)
    return samples


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def make_report(
    spec: builder.Spec,
    args: argparse.Namespace,
    configs: list[Config],
    samples: dict[Cell, list[list[float]]],
    elapsed: float,
) -> dict[str, object]:
    fp32_bytes = len(configs[0].model)
    variants = []
    for index, config in enumerate(configs):
        timings = []
        for threads in args.threads:
            for batch in args.batch_sizes:
                rounds = samples[threads, batch, index]
                base_rounds = samples[threads, batch, 0]
                calls = [t for calls in rounds for t in calls]
                base = statistics.median(t for calls in base_rounds for t in calls)
                median = statistics.median(calls)
                paired = statistics.median(
                    statistics.median(mine) / statistics.median(theirs)
                    for mine, theirs in zip(rounds, base_rounds, strict=True)
                )
                timings.append(
                    {
                        "threads": threads,
                        "batch": batch,
                        "calls": len(calls),
                        "median_ms": round(median * 1e3, 4),
                        "p90_ms": round(percentile(calls, 90) * 1e3, 4),
                        "ratio_to_fp32": round(median / base, 3),
                        "paired_ratio_to_fp32": round(paired, 3),
                        "rows_per_s": round(batch / median, 1),
                    }
                )
        entry: dict[str, object] = {"label": config.label, "variant": config.variant}
        if config.int8:
            entry["per_channel"] = config.per_channel
            entry["reduce_range"] = config.reduce_range
            if config.variant == "int8-static":
                entry["method"] = args.method
        entry.update(
            bytes=len(config.model),
            bytes_ratio_to_fp32=round(len(config.model) / fp32_bytes, 4),
            optimized_ops=config.ops,
            optimized_weight_dtypes=config.weight_dtypes,
            output_check=config.check,
            timings=timings,
        )
        variants.append(entry)
    return {
        "benchmark": "quantization",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "spec": str(args.spec),
        "model": spec.name,
        "machine": machine(),
        "software": {
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
            "onnxforge": _onnxforge_version(),
        },
        "settings": {
            "threads": args.threads,
            "batch_sizes": args.batch_sizes,
            "rounds": args.rounds,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "allow_spinning": args.spin,
            "inter_op_num_threads": 1,
            "calibration": {"rows": CALIBRATION_ROWS, "seed": CALIBRATION_SEED},
            "input_seed": INPUT_SEED,
            "order": "every (threads, batch, variant) cell once per round, shuffled each round",
            "elapsed_s": round(elapsed, 1),
        },
        "variants": variants,
    }


def _onnxforge_version() -> str:
    with contextlib.suppress(Exception):
        import onnxforge

        return str(onnxforge.__version__)
    return "unknown"


def machine() -> dict[str, object]:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first CPU's lines
    flags = set(info.get("flags", "").split())
    return {
        "cpu_model": info.get("model name") or platform.processor() or "unknown",
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family": info.get("cpu family"),
        "cpu_model_number": info.get("model"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "platform": platform.platform(),
    }


def _short_ops(ops: dict[str, int]) -> str:
    return ", ".join(
        f"{op.removeprefix('com.microsoft.')}x{n}" if n > 1 else op.removeprefix("com.microsoft.")
        for op, n in ops.items()
    )


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
    for threads in settings["threads"]:
        header = ["variant", "MB", "size x fp32"]
        for batch in settings["batch_sizes"]:
            header += [f"b{batch} med", f"b{batch} p90", f"b{batch} x fp32"]
        header.append(f"b{max(settings['batch_sizes'])} rows/s")
        lines = [header]
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
        _print_table(lines)
    print("\nwhat ONNX Runtime runs after graph optimization")
    rows = report["variants"][0]["output_check"]["rows"]
    lines = [
        [
            "variant",
            "operators",
            "weight values by type",
            "max abs diff vs fp32",
            f"argmax = fp32 ({rows} rows)",
        ]
    ]
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
    _print_table(lines)
    sys.stdout.flush()


def _print_table(lines: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("| " + " | ".join(cells) + " |")
        if n == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


SIZE_TARGET = 0.27  # int8 files at most this share of the fp32 file


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = report["variants"]
    labels = [entry["label"].replace(" ", "\n", 1) for entry in entries]
    settings = report["settings"]
    batches, thread_counts = settings["batch_sizes"], settings["threads"]
    cells = [(threads, batch) for batch in batches for threads in thread_counts]
    y = np.arange(len(entries))
    fig, (ax_size, ax_time) = plt.subplots(
        1,
        2,
        figsize=(14, 1.6 + 0.7 * len(entries)),
        sharey=True,
        gridspec_kw={"width_ratios": [1, 2.2]},
    )

    sizes = [entry["bytes"] / 1e6 for entry in entries]
    bars = ax_size.barh(y, sizes, color="#4c72b0")
    for bar, entry in zip(bars, entries, strict=True):
        ax_size.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {bar.get_width():.1f} MB, {entry['bytes_ratio_to_fp32']:.1%}",
            va="center",
            fontsize=8,
        )
    ax_size.axvline(sizes[0] * SIZE_TARGET, color="0.4", linestyle="--", linewidth=0.8)
    ax_size.text(
        sizes[0] * SIZE_TARGET,
        len(entries) - 0.45,
        f" {SIZE_TARGET:.0%} of fp32",
        fontsize=7,
        color="0.3",
        va="bottom",
    )
    ax_size.set_xlabel("file size, MB (label: share of the fp32 file)")
    ax_size.set_xlim(0, max(sizes) * 1.45)
    ax_size.set_yticks(y, labels, fontsize=8)
    ax_size.invert_yaxis()
    ax_size.set_title("file size", fontsize=10)

    height = 0.84 / len(cells)
    blues, oranges = plt.get_cmap("Blues"), plt.get_cmap("Oranges")
    ramps = [blues, oranges, plt.get_cmap("Greens"), plt.get_cmap("Purples")]
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
        ax_time.barh(
            y + offset,
            medians,
            height,
            color=ramp(shade),
            label=f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}",
        )
        ax_time.hlines(y + offset, medians, p90s, color="0.25", linewidth=0.6)
        for row, (median, p90, t) in enumerate(zip(medians, p90s, timings, strict=True)):
            text = (
                f" {median:.3g} ms" if row == 0 else f" {median:.3g} ms  x{t['ratio_to_fp32']:.2f}"
            )
            ax_time.text(max(median, p90), y[row] + offset, text, va="center", fontsize=6)
            longest = max(longest, p90)
    ax_time.set_xscale("log")
    ax_time.set_xlim(right=longest * 3.5)
    ax_time.set_xlabel(
        "latency per call, ms, log scale (bar: median, line: to p90; label: median, "
        "x median / fp32 median)"
    )
    ax_time.grid(axis="x", which="both", alpha=0.3)
    ax_time.set_title("ONNX Runtime latency, CPUExecutionProvider", fontsize=10)
    handles, names = ax_time.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(cells), fontsize=8, frameon=False)

    machine_info = report["machine"]
    flags = [flag for flag, present in machine_info["cpu_flags"].items() if present]
    fig.suptitle(
        f"{report['model']}, every variant measured side by side: {machine_info['cpu_model']}, "
        f"{machine_info['logical_cpus']} CPUs ({' '.join(flags)}), "
        f"onnxruntime {report['software']['onnxruntime']}, "
        f"{settings['rounds']} interleaved rounds x {settings['repeat']} calls per bar",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
