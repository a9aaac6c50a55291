"""onnxforge side by side with do-nothing gRPC servers, MLServer and KServe's ModelServer.

    python benchmarks/serving.py            # the committed run, about 8 minutes on 2 cores
    python benchmarks/serving.py --quick    # about 2 minutes: 1 round, shorter cells

In one run on one machine, for a small model (32-64-64-6 MLP: the server's own path is what
a request costs) and a wide one (512-2048-2048-10, 5.3 M parameters), the same prebuilt
KServe v2 ``ModelInfer`` bytes (FP32 in raw_input_contents) go to:

- ``onnxforge``: ``python -m onnxforge serve REPO``, its defaults as a new user gets them;
- ``null-aio``: a do-nothing ``grpc.aio`` server with the generated service (parses the
  request, answers onnxforge's real answer), the first floor; ``null-aio-uvloop`` the same
  on uvloop (the loop onnxforge serves on);
- ``null-sync``: a do-nothing thread-pool ``grpc.server``, bytes in and bytes out, the
  cheapest Python gRPC server: the second floor;
- ``kserve``, ``mlserver`` (with and without adaptive batching, with and without its
  inference worker process): the peers, each from its own virtual environment
  (``benchmarks/peers/setup.sh``) running the same ONNX file with ONNX Runtime; a peer
  without an environment is skipped, and the output and the JSON say so.

Closed-loop clients (one asyncio process of their own, ``onnxforge.bench.drive``) send 1-row
requests 1 and 32 at a time, and 64-row requests 4 at a time. Per cell: requests/s and
rows/s, p50/p99 latency, errors, and the server's CPU per request, read from ``/proc`` over
the server's whole process tree (MLServer's inference worker counts). Every round measures
every cell; the server order alternates between rounds (forward, then backward) and the
tables are the medians of the rounds. ONNX Runtime in-process (``session.run``, one call at
a time, batch 1 and 64, ONNX Runtime's default threads and one thread) is measured in the
same rounds: the compute ceiling that 64-row requests are held against.

The machine may be shared: before each cell the script waits (bounded) for other processes
to go quiet, records what they used during the cell, and measures a cell again (bounded)
when they used more than ``--max-others`` cores, keeping the quietest attempt. The 1-minute
load average is recorded per cell and for the run.

This file holds the options and the rounds; ``serving_setup`` starts what a run needs,
``serving_peers`` the peers, ``serving_workers`` the processes other than the servers under
test, ``serving_cells`` measures one cell, ``serving_report`` assembles the report and its
targets, ``serving_print`` and ``serving_plot`` show it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving_cells import (
    DEFAULT_SERVERS,
    SERVERS,
    VARIANTS,
    Cell,
    Rig,
    ort_cells,
    run_cell,
    server_cells,
)
from serving_peers import DEFAULT_HOME, PEERS
from serving_plot import plot
from serving_print import print_report
from serving_report import make_report
from serving_setup import Log, Processes, prepare

from onnxforge.bench import wait_quiet, write_json

QUICK = {"rounds": 1, "duration": 0.8, "warmup": 0.25, "quiet_wait": 5.0, "retry_budget": 5.0}
FULL = {"rounds": 3, "duration": 2.0, "warmup": 0.5, "quiet_wait": 20.0, "retry_budget": 20.0}


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"servers are among {', '.join(SERVERS)}; got {text!r}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="1 round of shorter cells (about 2 minutes)")
    add("--rounds", type=int, help="rounds (default 3; quick 1)")
    add("--duration", type=float, help="measured seconds per cell and round (2; quick 0.8)")
    add("--warmup", type=float, help="unmeasured seconds before each cell (0.5; quick 0.25)")
    add("--ort-duration", type=float, default=1.0, help="measured s per in-process cell (1)")
    add(
        "--servers",
        type=_names,
        default=list(DEFAULT_SERVERS),
        help=f"any of {','.join(SERVERS)} (default: all but the onnxforge-* flag variants)",
    )
    add("--flags", action="store_true",
        help="onnxforge's defaults against each flag variant alone (no floors, peers)")  # fmt: skip
    add("--peers", type=Path, default=DEFAULT_HOME,
        help=f"where setup.sh made the peers' environments (default {DEFAULT_HOME}, or "
        "ONNXFORGE_PEERS)")  # fmt: skip
    add("--serve-arg", dest="serve_args", action="append", default=[],
        help="an `onnxforge serve` argument to add (repeatable; none by default: the "
        "defaults as a new user gets them)")  # fmt: skip
    add("--json", type=Path, default=here / "serving.json")
    add("--plot", type=Path, default=here / "serving.png", help="'' for none")
    add(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="before a cell, wait until other processes use fewer cores than this (0.25)",
    )
    add("--quiet-wait", type=float, help="seconds a run may wait for quiet (20; quick 5)")
    add(
        "--max-others",
        type=float,
        default=0.3,
        help="measure a cell again when other processes used more cores than this (0.3)",
    )
    add("--retries", type=int, default=2, help="re-runs of a noisy cell at most (2)")
    add("--retry-budget", type=float, help="seconds of re-runs per run (20; quick 5)")  # fmt: skip
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.flags:
        args.servers = ["onnxforge", *VARIANTS]
    if str(args.plot) in ("", "."):
        args.plot = None
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.ort_duration <= 0:
        parser.error("--rounds >= 1, --duration > 0, --warmup >= 0, --ort-duration > 0")
    args.peer_names = [name for name in args.servers if name in PEERS]
    return args


@dataclass
class Noise:
    """What a run may still spend on waiting for quiet and on re-runs, and what it spent."""

    quiet_left: float
    retry_left: float
    waits: list[float] = field(default_factory=list)


def measure_cell(cell: Cell, rig: Rig, args: argparse.Namespace, noise: Noise) -> None:
    """One round of ``cell``: measured again while others were busy (bounded), quietest kept."""
    attempts = []
    while True:
        waited, _ = wait_quiet(args.quiet_cores, min(2.0, max(0.0, noise.quiet_left)))
        noise.quiet_left -= waited
        noise.waits.append(waited)
        attempts.append(run_cell(cell, rig, args))
        noisy = attempts[-1].others_cpu_s / args.duration > args.max_others
        if not noisy or len(attempts) > args.retries or noise.retry_left <= 0:
            break
        noise.retry_left -= args.warmup + args.duration
    cell.rounds.append(min(attempts, key=lambda a: a.others_cpu_s))
    cell.discarded += len(attempts) - 1


def run_rounds(cells: list[Cell], rig: Rig, args: argparse.Namespace, log: Log) -> Noise:
    """Every cell once per round; servers (and ONNX Runtime alone) in an order that
    alternates between rounds, so drift in the machine's load hits all alike."""
    noise = Noise(args.quiet_wait, args.retry_budget)
    groups = [name for name in ("ort", *SERVERS) if any(c.server == name for c in cells)]
    log(f"{len(cells)} cells x {args.rounds} round(s): {args.warmup:g} s warm-up + "
        f"{args.duration:g} s each ({args.ort_duration:g} s in-process)")  # fmt: skip
    for index in range(args.rounds):
        order = groups if index % 2 == 0 else groups[::-1]
        for group in order:
            mine = [cell for cell in cells if cell.server == group]
            for cell in mine if index % 2 == 0 else mine[::-1]:
                measure_cell(cell, rig, args, noise)
        log(f"round {index + 1}/{args.rounds} done ({' > '.join(order)}), "
            f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    return noise


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    load_before = os.getloadavg()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {text}", file=sys.stderr, flush=True)

    processes = Processes(multiprocessing.get_context("spawn"))
    with tempfile.TemporaryDirectory(prefix="onnxforge-serving-") as scratch:
        try:
            rig, prepared = prepare(args, Path(scratch), processes, log)
            wanted = [name for name in args.servers if name in rig.servers]
            cells = ort_cells() + server_cells(wanted)
            noise = run_rounds(cells, rig, args, log)
        finally:
            processes.close()
    load = {"before": load_before, "after": os.getloadavg()}
    report = make_report(args, prepared, cells, noise.waits, load)
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
