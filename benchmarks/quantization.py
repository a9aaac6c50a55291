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
import datetime
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from quantization_report import plot, print_report

from onnxforge import builder
from onnxforge.bench import machine_info, software_versions, write_json
from onnxforge.builder.quantize import QuantizeOptions, quantize
from onnxforge.builder.verify import sample_inputs

CALIBRATION_ROWS = 512
CALIBRATION_SEED = 1
INPUT_SEED = 2  # timing and check rows: drawn apart from the calibration rows
CHECK_ROWS = 1024  # rows for the output check against fp32 (the timing rows are the first ones)


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
    write_json(args.json, report)
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


def _timing(
    samples: dict[Cell, list[list[float]]], threads: int, batch: int, index: int
) -> dict[str, object]:
    """One (threads, batch) cell of a variant: median, p90, ratios to fp32, rows/s."""
    rounds = samples[threads, batch, index]
    base_rounds = samples[threads, batch, 0]
    calls = [t for calls in rounds for t in calls]
    base = statistics.median(t for calls in base_rounds for t in calls)
    median = statistics.median(calls)
    paired = statistics.median(
        statistics.median(mine) / statistics.median(theirs)
        for mine, theirs in zip(rounds, base_rounds, strict=True)
    )
    return {
        "threads": threads,
        "batch": batch,
        "calls": len(calls),
        "median_ms": round(median * 1e3, 4),
        "p90_ms": round(percentile(calls, 90) * 1e3, 4),
        "ratio_to_fp32": round(median / base, 3),
        "paired_ratio_to_fp32": round(paired, 3),
        "rows_per_s": round(batch / median, 1),
    }


def _variant_entry(
    config: Config, args: argparse.Namespace, fp32_bytes: int, timings: list[dict[str, object]]
) -> dict[str, object]:
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
    return entry


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
        timings = [
            _timing(samples, threads, batch, index)
            for threads in args.threads
            for batch in args.batch_sizes
        ]
        entry = _variant_entry(config, args, fp32_bytes, timings)
        variants.append(entry)
    return {
        "benchmark": "quantization",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "spec": str(args.spec),
        "model": spec.name,
        "machine": machine_info(),
        "software": software_versions(),
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


if __name__ == "__main__":
    sys.exit(main())
