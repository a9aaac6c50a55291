"""Serving throughput and latency, side by side with the compute and framework ceilings.

    python benchmarks/serving.py            # the committed run, about 4 minutes on 2 cores
    python benchmarks/serving.py --quick    # a smoke run, about 40 seconds

Measures, in one run on one machine:

(a) ONNX Runtime in-process: ``session.run`` on the same model files, batch 1 and 64, with
    the server's session options (the compute ceiling);
(b) a do-nothing gRPC server: ``grpc.aio`` with the same generated service, whose
    ``ModelInfer`` answers a precomputed response of the real answer's size (the framework
    ceiling);
(c) ``onnxforge serve`` with dynamic batching off and on,

for the small (``digits-mlp``) and the wide (``wide-mlp``) example, at several concurrencies
with 1-row requests and with 64-row requests. Every server and the load generator run in
processes of their own (no shared GIL). The load generator is closed-loop asyncio
(``grpc.aio``) in one process of its own (``--two-clients-from`` splits it in two), sending
prebuilt request bytes and not decoding answers. The machine may be shared and noisy: every cell
runs once per round, in an order shuffled afresh each round, so drift hits all alike, and
before each cell the script waits (bounded) for the other processes on the machine to go
quiet; the CPU they used during each cell is recorded, and a cell during which they used more
than ``--max-others`` cores is measured again (bounded), keeping the quietest attempt.

Memory: the resident set (VmRSS) of a server with an empty repository, with the two fp32
models, and with the bundled ``models/`` (all variants), beside the sizes of the model
files; what a fresh process holds after loading the repository with the server's own
``Registry``, before and after ``malloc_trim``, and what one more session of the wide model
costs; and the RSS of each server after every cell, every round and a final stretch of
sustained load, to show it does not grow with load, concurrency or batch size.

Writes a JSON file and a PNG and prints tables, including the targets with met/missed.

This file holds the options and the rounds; ``serving_setup`` starts what a run needs,
``serving_workers`` holds the processes other than the servers, ``serving_cells`` measures
one cell, ``serving_report`` assembles the report and its targets, ``serving_print`` and
``serving_plot`` show it. Server processes, the load driver, ``/proc`` readings and the
machine's description come from the benchmark harness, ``onnxforge.bench``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving_cells import Attempt, Cell, Rig, add, make_cells, run_cell
from serving_plot import plot
from serving_print import print_report
from serving_report import Measured, make_report
from serving_setup import Log, Processes, prepare

from onnxforge.bench import process_status, wait_quiet, write_json

# ----------------------------------------------------------------------------- settings

QUICK = {"rounds": 1, "duration": 0.4, "warmup": 0.15, "concurrency": [1, 32]}
QUICK |= {"rows64_concurrency": [1], "quiet_wait": 5.0, "retry_budget": 5.0, "sustain": 0.0}
FULL = {"rounds": 3, "duration": 1.0, "warmup": 0.25, "concurrency": [1, 8, 32, 128]}
FULL |= {"rows64_concurrency": [1, 8], "quiet_wait": 15.0, "retry_budget": 15.0, "sustain": 16.0}


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if not values or min(values) < 1 or max(values) > 1024:
        raise argparse.ArgumentTypeError(f"expected integers 1..1024, got {text!r}")
    return values


def _run_options(parser: argparse.ArgumentParser) -> None:
    here = Path(__file__).resolve().parent
    add = parser.add_argument
    add("--quick", action="store_true", help="a smoke run (about 40 s)")
    add("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    add("--duration", type=float, help="measured seconds per cell and round (default 1; quick 0.4)")
    add("--warmup", type=float, help="unmeasured seconds per cell (default 0.25; quick 0.15)")
    add(
        "--concurrency", type=_int_list, help="1-row concurrencies (default 1,8,32,128; quick 1,32)"
    )
    add(
        "--rows64-concurrency",
        type=_int_list,
        help="concurrencies for 64-row requests (default 1,8; quick 1)",
    )
    add(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime intra-op threads of the server sessions and of (a) (default 1)",
    )
    add(
        "--two-clients-from",
        type=int,
        default=0,
        help="concurrency from which the load comes from 2 client processes instead of 1 "
        "(default 0: always 1; on 2 cores a second client process took CPU from the server "
        "and lowered every rate measured)",
    )
    add(
        "--sustain",
        type=float,
        help="seconds of extra load on the onnxforge servers after the rounds, sampling their "
        "RSS (default 16; quick 0)",
    )
    add("--seed", type=int, default=0, help="seed for the order within rounds")
    add("--json", type=Path, default=here / "serving.json")
    add("--plot", type=Path, default=here / "serving.png", help="'' for none")


def _noise_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="before a cell, wait until other processes use fewer cores than this (default 0.25)",
    )
    add(
        "--quiet-wait",
        type=float,
        help="total seconds a run may spend waiting for quiet (default 15, quick 5; at most 3 s "
        "per cell)",
    )
    add(
        "--max-others",
        type=float,
        default=0.3,
        help="re-run a cell when other processes used more cores than this during it (default 0.3)",
    )
    add("--retries", type=int, default=2, help="re-runs of a noisy cell at most (default 2)")
    add("--retry-budget", type=float, help="total seconds of re-runs per run (default 15, quick 5)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _run_options(parser)
    _noise_options(parser)
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if str(args.plot) in ("", "."):
        args.plot = None
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.threads < 0:
        parser.error("--rounds >= 1, --duration > 0, --warmup >= 0, --threads >= 0")
    if args.rounds * args.duration > 120:
        parser.error("rounds x duration is over 120 s per cell; keep runs bounded")
    return args


# ----------------------------------------------------------------------------- measuring


@dataclass
class Noise:
    """What a run may still spend on waiting for quiet and on re-runs, and what it spent."""

    quiet_left: float
    retry_left: float
    waits: list[float] = field(default_factory=list)


def measure_cell(cell: Cell, rig: Rig, args: argparse.Namespace, noise: Noise) -> None:
    """One round of ``cell``: measured again while others were busy (bounded), quietest kept."""
    attempts: list[Attempt] = []
    while True:
        waited, _ = wait_quiet(args.quiet_cores, min(3.0, max(0.0, noise.quiet_left)))
        noise.quiet_left -= waited
        noise.waits.append(waited)
        attempts.append(run_cell(cell, rig, args))
        noisy = attempts[-1].others_cpu_s / args.duration > args.max_others
        if not noisy or len(attempts) > args.retries or noise.retry_left <= 0:
            break
        noise.retry_left -= args.warmup + args.duration
    # The attempt during which other processes used the least CPU.
    add(cell, min(attempts, key=lambda a: a.others_cpu_s), args.duration)
    cell.discarded += len(attempts) - 1


def run_rounds(
    cells: list[Cell], rig: Rig, args: argparse.Namespace, noise: Noise, log: Log
) -> dict[str, list[int]]:
    """Every cell once per round, in an order shuffled afresh each round; RSS after each."""
    rng = random.Random(args.seed)
    rss_rounds: dict[str, list[int]] = defaultdict(list)
    log(
        f"{len(cells)} cells x {args.rounds} round(s), {args.warmup:g} s warm-up + "
        f"{args.duration:g} s each"
    )
    for round_index in range(args.rounds):
        order = cells[:]
        rng.shuffle(order)
        for cell in order:
            measure_cell(cell, rig, args, noise)
        for config, server in rig.servers.items():
            rss_rounds[config].append(process_status(server.pid).get("VmRSS", 0))
        log(f"round {round_index + 1}/{args.rounds} done")
    return rss_rounds


SUSTAIN_LOADS = (("wide", 1, 128), ("wide", 64, 8), ("small", 1, 128), ("small", 64, 8))


def sustain(rig: Rig, args: argparse.Namespace, log: Log) -> dict[str, dict[str, Any]]:
    """Load the onnxforge servers for ``args.sustain`` s more, sampling RSS after every chunk.

    Chunks of 2 s alternate between the two servers and cycle through 1-row requests at
    concurrency 128 and 64-row requests at concurrency 8, for both models.
    """
    if args.sustain <= 0:
        return {}
    chunk = argparse.Namespace(**{**vars(args), "warmup": 0.0, "duration": 2.0})
    out: dict[str, dict[str, Any]] = {
        config: {
            "requests": 0,
            "seconds": 0.0,
            "rss_mib_start": round(
                process_status(rig.servers[config].pid).get("VmRSS", 0) / 1024, 1
            ),
            "rss_mib_samples": [],
        }
        for config in ("off", "on")
    }
    began = time.monotonic()
    index = 0
    while time.monotonic() - began < args.sustain:
        model, rows, concurrency = SUSTAIN_LOADS[(index // 2) % len(SUSTAIN_LOADS)]
        config = ("off", "on")[index % 2]
        attempt = run_cell(Cell(config, model, rows, concurrency), rig, chunk)
        entry = out[config]
        entry["requests"] += len(attempt.latencies)
        entry["errors"] = entry.get("errors", 0) + attempt.errors
        entry["seconds"] += chunk.duration
        entry["rss_mib_samples"].append(round(attempt.rss_kb / 1024, 1))
        index += 1
    for entry in out.values():
        samples = entry["rss_mib_samples"]
        entry["rss_mib_end"] = samples[-1] if samples else entry["rss_mib_start"]
        entry["growth_mib"] = round(entry["rss_mib_end"] - entry["rss_mib_start"], 1)
    log(
        "sustained load: "
        + "; ".join(
            f"{c} {e['requests']:,} requests, RSS {e['rss_mib_start']} -> {e['rss_mib_end']} MiB"
            for c, e in out.items()
        )
    )
    return out


# ----------------------------------------------------------------------------- the run


def measure(rig: Rig, args: argparse.Namespace, log: Log) -> Measured:
    cells = make_cells(args)
    noise = Noise(args.quiet_wait, args.retry_budget)
    rss_rounds = run_rounds(cells, rig, args, noise, log)
    sustained = sustain(rig, args, log)
    final = {config: process_status(server.pid) for config, server in rig.servers.items()}
    return Measured(cells, rss_rounds, sustained, final, noise.waits)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {text}", file=sys.stderr, flush=True)

    processes = Processes(multiprocessing.get_context("spawn"))
    with tempfile.TemporaryDirectory(prefix="onnxforge-serving-") as scratch:
        try:
            rig, prepared = prepare(args, Path(scratch), processes, log)
            report = make_report(args, prepared, measure(rig, args, log))
        finally:
            processes.close()
    report["settings"]["elapsed_s"] = round(time.monotonic() - began, 1)
    print_report(report)
    write_json(args.json, report)
    print(f"\nwrote {args.json}", file=sys.stderr)
    if args.plot is not None:
        plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
