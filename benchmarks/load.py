"""Sustained load against the gRPC server: throughput, latency, errors, server memory.

    python benchmarks/load.py                                   # own server, digits-mlp
    python benchmarks/load.py --model wide-mlp --rows 16 --concurrency 64 --requests 5000
    python benchmarks/load.py --url 127.0.0.1:8001 --server-pid 12345

Without ``--url`` the script copies the model's folders (the spec's own folder and its
variants) from ``--repository`` (default ``models/``) into a temporary folder, starts
``python -m onnxforge serve`` on it on 127.0.0.1 with a free port, and stops it with
SIGTERM at the end (reporting its exit code and its "stopped: ..." line). The server, the
load driver, the memory readings and the machine's description come from the benchmark
harness (``onnxforge.bench``). The server
builds whatever is missing or stale there, as it does at start-up anyway.

``--concurrency`` asyncio clients (``onnxforge.client.AsyncInferenceClient``, one channel
each) send ``--requests`` requests of ``--rows`` rows in total, closed-loop, after
``--warmup`` requests that are not measured. The run is bounded twice: by the request
count and by ``--max-seconds``. Inputs are drawn from the spec's input distribution; when
the model is the spec's fp32 model every answer is checked against the NumPy reference
(``builder.reference.run``), otherwise only its shape is.

The server's resident memory (VmRSS from /proc/<pid>/status, Linux, split into RssAnon
and RssFile) is read after the warm-up and at the end, with the peak (VmHWM); with
``--url`` only if ``--server-pid`` is given. Prints one JSON object (and writes it to
``--json``); exit code 1 when any request failed or any answer was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge import builder
from onnxforge.bench import (
    Load,
    Outcome,
    ServerError,
    ServerProcess,
    drive,
    machine_info,
    process_status,
    software_versions,
)
from onnxforge.bench.report import dumps
from onnxforge.builder.samples import sample_inputs
from onnxforge.client import AsyncInferenceClient

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("fp16", "int8-dynamic", "int8-static")
STOPPED = re.compile(r"stopped: [^\n]*\d+ cut off")
POOL = 16  # distinct inputs, reused round-robin


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="a running server (HOST:PORT); default: start one")
    parser.add_argument(
        "--repository",
        type=Path,
        default=REPO_ROOT / "models",
        help="where the specs are (default: models/); copied, never written to",
    )
    parser.add_argument("--model", default="digits-mlp", help="model name (default: digits-mlp)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests (20000)")
    parser.add_argument("--warmup", type=int, default=2_000, help="unmeasured requests (2000)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request deadline, s")
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, help="stop sending after this long (600)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="own server: intra-op threads per session (1)"
    )
    parser.add_argument("--server-pid", type=int, help="with --url: read this process's RSS")
    parser.add_argument("--spec", type=Path, help="with --url: the spec, to check the answers")
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    for name in ("concurrency", "requests", "rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0 or args.max_seconds <= 0 or args.timeout <= 0:
        parser.error("--warmup must be >= 0, --max-seconds and --timeout > 0")
    return args


# ---------------------------------------------------------------------------- the server


def base_name(model: str) -> str:
    for variant in VARIANTS:
        if model.endswith(f"-{variant}"):
            return model.removesuffix(f"-{variant}")
    return model


def copy_model(repository: Path, model: str, target: Path) -> Path:
    """The spec's folder and its variants' folders, copied into ``target``."""
    base = base_name(model)
    names = [base, *(f"{base}-{variant}" for variant in VARIANTS)]
    found = [name for name in names if (repository / name).is_dir()]
    if base not in found:
        raise SystemExit(f"error: no folder {repository / base}")
    for name in found:
        shutil.copytree(repository / name, target / name, ignore=shutil.ignore_patterns("*.py"))
    return target


def start_server(repository: Path, threads: int) -> ServerProcess:
    """``python -m onnxforge serve`` on a free port of 127.0.0.1 (the harness's process)."""
    try:
        return ServerProcess(
            repository,
            "--host",
            "127.0.0.1",
            threads=threads,
            metrics=False,
            cwd=REPO_ROOT,
            start_seconds=600.0,
        )
    except ServerError as error:
        raise SystemExit(f"error: {error}") from None


def stop_server(server: ServerProcess) -> dict[str, Any]:
    """SIGTERM, then wait (60 s at most, then kill); exit code and the stop line."""
    code = server.close(60.0)
    stopped = STOPPED.search(server.output)
    return {"exit_code": code, "stopped": stopped.group(0) if stopped else None}


def memory_kib(pid: int | None) -> dict[str, int] | None:
    """VmRSS, its anonymous and file-backed parts, and VmHWM (peak) of a process, in KiB.

    None where /proc is not readable. RssAnon is the heap and arenas, what a leak grows;
    RssFile (mapped files and shared libraries) can shrink when the kernel reclaims pages.
    """
    if pid is None:
        return None
    status = process_status(pid)
    found = {key: status[key] for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile") if key in status}
    return found or None


# ---------------------------------------------------------------------------- the load


def make_inputs(
    spec: builder.Spec | None, meta: Any, rows: int
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]] | None]:
    """``POOL`` input dicts, and the reference outputs when the answers can be checked."""
    (tensor,) = meta.inputs  # onnxforge models have one input
    shape = [rows if dim == -1 else dim for dim in tensor.shape]
    if spec is None:
        rng = np.random.default_rng(0)
        pool = [{tensor.name: rng.normal(size=shape).astype(np.float32)} for _ in range(POOL)]
        return pool, None
    rows_all = sample_inputs(spec, POOL * rows, seed=0).reshape(POOL, *shape)
    pool = [{tensor.name: x} for x in rows_all]
    if meta.name != spec.name:  # a quantized or fp16 variant: no exact reference
        return pool, None
    return pool, [builder.reference.run(spec, x[tensor.name]) for x in pool]


def right(got: dict[str, np.ndarray], want: dict[str, np.ndarray] | None, rows: int) -> bool:
    if want is None:
        return all(len(value) == rows for value in got.values())
    return got.keys() == want.keys() and all(
        np.allclose(got[name], want[name], atol=1e-5, rtol=0) for name in want
    )


async def measure(
    url: str,
    model: str,
    pool: list[dict[str, np.ndarray]],
    wanted: list[dict[str, np.ndarray]] | None,
    args: argparse.Namespace,
    count: int,
) -> dict[str, Any]:
    """``count`` requests from ``args.concurrency`` clients (a channel each); the figures."""
    wrong = 0
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(AsyncInferenceClient(url))
            for _ in range(args.concurrency)
        ]

        async def send(worker: int, index: int) -> None:
            nonlocal wrong
            which = index % len(pool)
            got = await clients[worker].infer(model, pool[which], timeout=args.timeout)
            if not right(got, None if wanted is None else wanted[which], args.rows):
                wrong += 1

        load = Load(args.concurrency, requests=count, max_seconds=args.max_seconds)
        outcome = await drive(send, load, args.rows)
    return figures(outcome, wrong)


def figures(outcome: Outcome, wrong: int) -> dict[str, Any]:
    """The report's fields for one measured run."""
    latency = None
    if outcome.answered:
        ms = outcome.latencies * 1e3
        p50, p90, p99 = outcome.percentiles_ms((50, 90, 99))
        latency = {
            "p50": round(p50, 3),
            "p90": round(p90, 3),
            "p99": round(p99, 3),
            "max": round(float(ms.max()), 3),
            "mean": round(float(ms.mean()), 3),
        }
    return {
        "sent": outcome.sent,
        "answered": outcome.answered,
        "errors": {code: n for code, n in sorted(outcome.statuses.items()) if code != "OK"},
        "wrong_answers": wrong,
        "seconds": round(outcome.seconds, 3),
        "throughput_rps": round(outcome.requests_per_second, 1),
        "rows_per_second": round(outcome.rows_per_second, 1),
        "latency_ms": latency,
        "stopped_by_time_limit": outcome.stopped_by_time_limit,
    }


def memory_growth(before: dict[str, int] | None, after: dict[str, int] | None) -> Any:
    if not before or not after:
        return None
    return {
        "rss_before_kib": before["VmRSS"],
        "rss_after_kib": after["VmRSS"],
        "rss_growth_kib": after["VmRSS"] - before["VmRSS"],
        "rss_anon_before_kib": before.get("RssAnon"),
        "rss_anon_after_kib": after.get("RssAnon"),
        "rss_file_before_kib": before.get("RssFile"),
        "rss_file_after_kib": after.get("RssFile"),
        "rss_peak_kib": after.get("VmHWM"),
    }


async def run(
    url: str, spec: builder.Spec | None, args: argparse.Namespace, pid: int | None
) -> dict[str, Any]:
    async with AsyncInferenceClient(url) as probe:
        meta = await probe.metadata(args.model)
    pool, wanted = make_inputs(spec, meta, args.rows)
    warmup = None
    if args.warmup:
        warmup = await measure(url, args.model, pool, wanted, args, args.warmup)
    before = memory_kib(pid)
    measured = await measure(url, args.model, pool, wanted, args, args.requests)
    after = memory_kib(pid)
    return {
        "model": args.model,
        "rows_per_request": args.rows,
        "concurrency": args.concurrency,
        "checked_against_reference": wanted is not None,
        "warmup": None
        if warmup is None
        else {k: warmup[k] for k in ("sent", "answered", "errors", "wrong_answers")},
        **measured,
        "server_memory": memory_growth(before, after),
    }


def machine() -> dict[str, Any]:
    described, versions = machine_info(), software_versions()
    return {
        "cpus": described["logical_cpus"],
        "cores_to_use": described["cores_to_use"],
        "python": versions["python"],
        "grpcio": versions.get("grpcio"),
        "platform": described["platform"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        server = None
        if args.url is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="load-")))
            repository = copy_model(args.repository, args.model, scratch)
            spec_path: Path | None = repository / base_name(args.model) / "spec.yaml"
            print(f"starting a server on a copy of {args.repository} ...", file=sys.stderr)
            server = start_server(repository, args.threads)
            url, pid = server.url, server.pid
        else:
            spec_path, url, pid = args.spec, args.url, args.server_pid
        spec = builder.load_spec(spec_path) if spec_path and spec_path.is_file() else None
        print(
            f"{args.requests} requests of {args.rows} row(s) to {args.model} at {url} from "
            f"{args.concurrency} clients (warm-up {args.warmup}) ...",
            file=sys.stderr,
        )
        try:
            report = asyncio.run(run(url, spec, args, pid))
        finally:
            stopped = stop_server(server) if server is not None else None
    report["url"] = url
    report["server"] = {"started_by_script": server is not None, **(stopped or {})}
    report["machine"] = machine()
    text = dumps(report)
    print(text, end="")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    failed = report["errors"] or report["wrong_answers"] or report["answered"] < args.requests
    if stopped is not None and stopped["exit_code"] != 0:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
