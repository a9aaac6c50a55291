"""``onnxforge serve --ray`` on a local two-node Ray cluster against the plain server.

    python benchmarks/cluster.py               # plain, 1 and 2 replicas (about a minute)
    python benchmarks/cluster.py --ray-serve   # also Ray Serve's gRPC proxy (about 2 minutes)

The committed figures (``benchmarks/cluster.json``, ``cluster.png``)::

    python benchmarks/cluster.py --ray-serve --json benchmarks/cluster.json \
        --plot benchmarks/cluster.png

One machine, one run, short cells: a local cluster (``ray.cluster_utils.Cluster``: a head
and a worker node, one Ray CPU each, real raylets) serves the bundled ``digits-mlp`` (fp32)
in each topology in turn:

- ``plain``: ``onnxforge serve`` (one process); ``workers-2``: with ``--workers 2``, the
  one-machine way to use both cores;
- ``ray-1``, ``ray-2``: ``onnxforge serve --ray`` with 1 and 2 replicas (one per node, both
  nodes on this machine, so they share its port and its cores);
- ``serve-1``, ``serve-2`` (``--ray-serve``): the same servicer behind Ray Serve's gRPC
  proxy (``cluster_serve.py``), the topology ``serve --ray`` does not use.

Each cell sends 1-row ModelInfer requests (prebuilt bytes, closed loop, ``onnxforge.bench``)
from this process over 8 ``grpc.aio`` channels, each on a connection of its own (the
kernel spreads connections over the replicas sharing a port), at 1 and at 32 concurrent
clients. The servers' CPU time (every replica's, and Ray Serve's proxy's) is read from
``/proc`` around each cell; their resident memory after it. The load generator shares the
two cores with the servers, so the numbers compare topologies on this machine; the JSON's
``per_node`` section turns the measured CPU per request and memory per replica into what
one more node would add.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.bench import (
    Load,
    ServerProcess,
    drive,
    machine_info,
    markdown_table,
    percentiles_ms,
    process_cpu_seconds,
    process_status,
    software_versions,
    write_json,
)
from onnxforge.bench.process import SERVING as PLAIN_SERVING
from onnxforge.cluster import SERVING as RAY_SERVING
from onnxforge.protocol.generated import inference_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
MODEL = "digits-mlp"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
CHANNELS = 8
CONCURRENCY = (1, 32)
# Ray's process titles: our replicas, Ray Serve's replicas and proxy, each node's daemon.
REPLICA, SERVE_REPLICA, SERVE_PROXY = "ray::ReplicaServer", "ray::ServeReplica", "ray::ProxyActor"


def pids_titled(prefix: str) -> list[int]:
    """Processes whose command line starts with ``prefix`` (Ray names its workers so)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if command.startswith(prefix):
                    found.append(int(entry.name))
    return found


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (``--workers``: the workers)."""
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def rss_mb(pids: list[int]) -> float:
    return sum(process_status(pid).get("VmRSS", 0) for pid in pids) / 1024


def request_bytes() -> bytes:
    rows = np.random.default_rng(3).normal(size=(1, 64)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=MODEL, id="bench")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(rows.tobytes())
    return request.SerializeToString()


async def measure(port: int, pids: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Both concurrency levels against ``port``; ``pids``: the serving processes."""
    import grpc

    # Each channel its own connection: gRPC otherwise shares one among the channels of a
    # process to one address, and one connection reaches one replica.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(CHANNELS)
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 60)
    calls = [channel.unary_unary(METHOD) for channel in channels]
    payload = request_bytes()

    async def send(worker: int, index: int) -> object:
        return await calls[worker % CHANNELS](payload, timeout=30.0)

    cells = []
    for concurrency in CONCURRENCY:
        await drive(send, Load(concurrency, duration=args.warmup))
        cpu = sum(process_cpu_seconds(pid) for pid in pids)
        outcome = await drive(send, Load(concurrency, duration=args.duration))
        cpu = sum(process_cpu_seconds(pid) for pid in pids) - cpu
        p50, p99 = percentiles_ms(outcome.latencies, (50, 99))
        cells.append(
            {
                "clients": concurrency,
                "requests_per_s": round(outcome.requests_per_second, 1),
                "p50_ms": round(p50, 3),
                "p99_ms": round(p99, 3),
                "errors": outcome.errors,
                "first_error": outcome.first_error,
                "server_cpu_us_per_request": round(1e6 * cpu / max(1, outcome.sent), 1),
                "server_cores": round(cpu / outcome.seconds, 2),
            }
        )
    for channel in channels:
        await channel.close()
    return cells


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    began = time.monotonic()
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(timeout=120)
    cluster.start_seconds = time.monotonic() - began
    try:
        yield cluster
    finally:
        cluster.shutdown()


def run_onnxforge(repository: Path, extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    on_ray = "--ray" in extra
    pattern = RAY_SERVING if on_ray else PLAIN_SERVING
    began = time.monotonic()
    with ServerProcess(repository, *extra, threads=1, metrics=False, pattern=pattern) as server:
        started = time.monotonic() - began
        pids = pids_titled(REPLICA) if on_ray else [server.pid, *children(server.pid)]
        cells = asyncio.run(measure(server.port, pids, args))
        return {
            "start_seconds": round(started, 1),
            "processes": len(pids),
            "server_rss_mb": round(rss_mb(pids), 1),
            "cells": cells,
        }


def run_ray_serve(
    repository: Path, address: str, replicas: int, args: argparse.Namespace
) -> dict[str, Any]:
    import cluster_serve
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(cluster_serve)  # its replicas cannot import it
    port = free_port()
    began = time.monotonic()
    try:
        cluster_serve.deploy(repository, replicas, port, free_port())
        started = time.monotonic() - began
        pids = pids_titled(SERVE_REPLICA) + pids_titled(SERVE_PROXY)
        cells = asyncio.run(measure(port, pids, args))
        return {
            "start_seconds": round(started, 1),
            "processes": len(pids),
            "server_rss_mb": round(rss_mb(pids), 1),
            "cells": cells,
        }
    finally:
        cluster_serve.shutdown()
        ray.shutdown()


def ray_daemons_mb() -> dict[str, float]:
    """Resident memory of Ray's own processes while the cluster idles (here: both nodes)."""
    kinds = {"raylet": 0.0, "gcs_server": 0.0, "agents and monitors": 0.0, "workers": 0.0}
    own = os.getpid()
    for pid in pids_titled(""):
        command = _command(pid)
        if pid == own or "ray" not in command:
            continue
        if "raylet" in command.split(" ")[0]:
            kind = "raylet"
        elif "gcs_server" in command.split(" ")[0]:
            kind = "gcs_server"
        elif command.startswith("ray::"):
            kind = "workers"
        elif "site-packages/ray/" in command:
            kind = "agents and monitors"
        else:
            continue
        kinds[kind] += rss_mb([pid])
    return {kind: round(mb, 1) for kind, mb in kinds.items()}


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def per_node(results: dict[str, Any], daemons: dict[str, float]) -> dict[str, Any]:
    """What one more node adds, on paper, from the replicas' measured cost."""
    busy = results["ray-2"]["cells"][-1]  # 32 clients: the replicas as busy as they get here
    cpu_us = busy["server_cpu_us_per_request"]
    per_replica_mb = results["ray-2"]["server_rss_mb"] / 2
    return {
        "replica_cpu_us_per_request": cpu_us,
        "requests_per_s_per_core": round(1e6 / cpu_us) if cpu_us else None,
        "replica_rss_mb": round(per_replica_mb, 1),
        "ray_daemons_rss_mb_two_nodes": daemons,
        "note": "A node with C cores running C replicas (--replica-cpus 1) adds about C x "
        "requests_per_s_per_core of 1-row requests, if the clients run elsewhere and spread "
        "their connections over the nodes (a TCP load balancer or DNS); it costs "
        "replica_rss_mb per replica plus a raylet. Not measured on more than one machine.",
    }


def prepare(folder: Path) -> Path:
    repository = folder / "repository"
    (repository / MODEL).mkdir(parents=True)
    for file in ("spec.yaml", "weights.npz"):
        shutil.copy(ROOT / "models" / MODEL / file, repository / MODEL / file)
    spec = repository / MODEL / "spec.yaml"
    command = [sys.executable, "-m", "onnxforge", "build", str(spec), "--variants", "fp32"]
    subprocess.run([*command, "--repository", str(repository)], check=True, capture_output=True)
    return repository


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="measured s per cell")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured s per cell")
    parser.add_argument("--ray-serve", action="store_true", help="also Ray Serve's proxy")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="draw them here (PNG)")
    parser.add_argument("--replot", type=Path, help="only draw --plot from this JSON")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.plot or args.replot.with_suffix(".png"))
        return 0
    load_average = os.getloadavg()[0]  # a shared machine: say how busy it was
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="onnxforge-cluster-") as scratch:
        repository = prepare(Path(scratch))
        results["plain"] = run_onnxforge(repository, [], args)
        results["workers-2"] = run_onnxforge(repository, ["--workers", "2"], args)
        with local_cluster() as cluster:
            cluster_start = cluster.start_seconds
            daemons = ray_daemons_mb()
            for replicas in (1, 2):
                extra = ["--ray", cluster.address, "--replicas", str(replicas)]
                results[f"ray-{replicas}"] = run_onnxforge(repository, extra, args)
            if args.ray_serve:
                for replicas in (1, 2):
                    serve = run_ray_serve(repository, cluster.address, replicas, args)
                    results[f"serve-{replicas}"] = serve
    report = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine_info(),
        "software": software_versions(),
        "load_average_1m_at_start": round(load_average, 2),
        "cluster_start_seconds": round(cluster_start, 1),
        "duration_s": args.duration,
        "channels": CHANNELS,
        "results": results,
        "per_node": per_node(results, daemons),
    }
    print_report(report)
    if args.json:
        write_json(args.json, report)
    if args.plot:
        plot(report, args.plot)
    return 0


def print_report(report: dict[str, Any]) -> None:
    columns = ("topology", "clients", "req/s", "p50 ms", "p99 ms", "errors", "CPU us/req")
    rows = []
    for name, result in report["results"].items():
        for cell in result["cells"]:
            rows.append(
                (
                    name,
                    str(cell["clients"]),
                    f"{cell['requests_per_s']:,.0f}",
                    f"{cell['p50_ms']:.2f}",
                    f"{cell['p99_ms']:.2f}",
                    str(cell["errors"]),
                    f"{cell['server_cpu_us_per_request']:,.0f}",
                )
            )
    print(markdown_table(columns, rows))
    print(f"cluster start: {report['cluster_start_seconds']} s; per node: {report['per_node']}")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.38
    for offset, clients in ((-width / 2, 1), (width / 2, 32)):
        cells = [
            next(c for c in report["results"][n]["cells"] if c["clients"] == clients) for n in names
        ]
        x = np.arange(len(names)) + offset
        label = f"{clients} client{'s' if clients > 1 else ''}"
        axes[0].bar(x, [c["requests_per_s"] for c in cells], width, label=label)
        axes[1].bar(x, [c["p50_ms"] for c in cells], width, label=label)
        axes[2].bar(x, [c["p99_ms"] for c in cells], width, label=label)
    for axis, title in zip(axes, ("requests / s", "p50 ms", "p99 ms"), strict=True):
        axis.set_xticks(np.arange(len(names)), names)
        axis.set_title(title)
        if title != "requests / s":
            axis.set_yscale("log")  # 1 ms beside 300 ms
        axis.legend()
    figure.suptitle(
        f"{MODEL}, 1-row requests, one 2-core machine: plain server, serve --ray (ray-N) "
        "and Ray Serve's proxy (serve-N)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
