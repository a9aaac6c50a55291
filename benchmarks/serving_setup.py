"""Setting up ``serving.py``'s run: the model repository, the requests, every server, the
ONNX Runtime worker and the load process; every server's answers checked against ONNX Runtime.

onnxforge runs as a new user gets it (``python -m onnxforge serve REPO``: no tuning flag,
only free ports); the two do-nothing servers answer onnxforge's real answers (so the same
bytes); the peers come from ``serving_peers``.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from serving_cells import VARIANTS, Rig, Target
from serving_peers import find_peers, peer_software, start_peers
from serving_workers import (
    METHOD,
    MODELS,
    REQUEST_TIMEOUT_S,
    client_main,
    compute_main,
    null_server_main,
    null_sync_main,
    null_uvloop_main,
)

from onnxforge.bench import ServerProcess, process_tree_rss_kib

ROOT = Path(__file__).resolve().parent.parent
INPUT_SEED = 3
Log = Callable[[str], None]
# The small model of hot_path.py: session.run of one row takes microseconds, so what a
# request costs is the server's own path. Serving settings as the wide example has them.
SMALL_SPEC = """\
name: small-mlp
description: 32-64-64-6 MLP, small enough that the server's own path dominates
input: {name: x, shape: [32], dtype: float32}
output: {name: probabilities}
seed: 1
layers:
  - {type: dense, units: 64, activation: relu}
  - {type: dense, units: 64, activation: relu}
  - {type: dense, units: 6, activation: softmax}
serving: {max_batch_size: 64, max_queue_delay_us: 500, instances: 1}
"""


@dataclass
class Processes:
    """What a run has started, to be stopped at the end whatever happens."""

    spawn: Any
    servers: dict[str, Target] = field(default_factory=dict)
    workers: list[tuple[Any, Any]] = field(default_factory=list)  # (pipe, process)

    def start(self, target: Callable[..., None], *args: Any) -> tuple[Any, Any]:
        """A spawned process running ``target(*args, pipe)``; (our end of the pipe, process)."""
        parent, child = self.spawn.Pipe()
        process = self.spawn.Process(target=target, args=(*args, child), daemon=True)
        process.start()
        return parent, process

    def worker(self, target: Callable[..., None], *args: Any) -> tuple[Any, Any]:
        """Like :meth:`start`, and stopped with a ("stop",) message at the end."""
        parent, process = self.start(target, *args)
        self.workers.append((parent, process))
        return parent, process

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        for conn, process in self.workers:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
            _join(process)


def _join(process: Any) -> None:
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join(5)


def start_onnxforge(repo: Path, extra: list[str]) -> Target:
    """``python -m onnxforge serve REPO`` on free ports (gRPC, HTTP/REST and metrics, as by
    default), nothing else unless ``extra`` (``--serve-arg``) says so."""
    server = ServerProcess(repo, *extra, http=True, cwd=ROOT)
    return Target("onnxforge", server.pid, server.port, lambda: _close(server))


def _close(server: ServerProcess) -> None:
    server.close(20.0)


def start_null(processes: Processes, name: str, main: Callable[..., None], given: Any) -> Target:
    """A do-nothing server in a process of its own."""
    parent, null = processes.start(main, given)
    if not parent.poll(60):
        raise RuntimeError(f"the {name} server did not start")

    def stop() -> None:
        with contextlib.suppress(OSError):
            parent.send("stop")
        _join(null)

    return Target(name, null.pid, parent.recv(), stop)


def build_repository(repo: Path, log: Log) -> dict[str, Path]:
    """The small model and the wide example, built fp32 into ``repo``; their spec paths."""
    (repo / MODELS["small"]).mkdir(parents=True)
    specs = {"small": repo / MODELS["small"] / "spec.yaml"}
    specs["wide"] = ROOT / "models" / MODELS["wide"] / "spec.yaml"
    specs["small"].write_text(SMALL_SPEC)
    build = subprocess.run(
        [sys.executable, "-m", "onnxforge", "build", *map(str, specs.values()), "--variants",
         "fp32", "--repository", str(repo), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if build.returncode != 0:
        raise RuntimeError(f"onnxforge build failed:\n{build.stderr[-2000:]}")
    log(f"built {', '.join(MODELS.values())} (fp32) into {repo}")
    return specs


def make_requests(
    specs: dict[str, Path],
) -> tuple[dict[tuple[str, int], np.ndarray], dict[tuple[str, int], bytes]]:
    """Inputs of 1 and 64 rows per model, and their prebuilt ModelInfer request bytes
    (KServe v2, FP32 in raw_input_contents, no outputs named: every output)."""
    from onnxforge.builder.samples import sample_inputs
    from onnxforge.builder.spec import load_spec
    from onnxforge.client import infer_request

    rows = {
        key: sample_inputs(load_spec(spec), 64, seed=INPUT_SEED).astype(np.float32)
        for key, spec in specs.items()
    }
    inputs = {(m, r): np.ascontiguousarray(rows[m][:r]) for m in MODELS for r in (1, 64)}
    payloads = {
        (m, r): infer_request(MODELS[m], {"x": inputs[(m, r)]}).SerializeToString()
        for m in MODELS
        for r in (1, 64)
    }
    return inputs, payloads


def check_answers(rig: Rig, names: list[str]) -> tuple[dict[tuple[str, int], bytes], dict]:
    """Every named server's answers against ONNX Runtime; onnxforge's answers, differences."""
    import grpc

    from onnxforge.client import decode_outputs
    from onnxforge.protocol.generated import inference_pb2 as pb

    responses: dict[tuple[str, int], bytes] = {}
    check: dict[str, float] = {}
    for name in names:
        with grpc.insecure_channel(f"127.0.0.1:{rig.servers[name].port}") as channel:
            call = channel.unary_unary(METHOD)
            for (model, n), payload in rig.payloads.items():
                answer = call(payload, timeout=REQUEST_TIMEOUT_S)
                rig.compute.send(("outputs", MODELS[model], rig.inputs[(model, n)]))
                expected = rig.compute.recv()
                got = decode_outputs(pb.ModelInferResponse.FromString(answer))
                if set(got) != set(expected) or any(got[k].shape != expected[k].shape for k in got):
                    raise RuntimeError(f"{name} answered {[(k, v.shape) for k, v in got.items()]}")
                diff = max(float(np.max(np.abs(got[k] - expected[k]))) for k in got)
                check[f"{name} {MODELS[model]} {n} rows"] = diff
                if diff > 1e-5:
                    raise RuntimeError(f"{name} {model} {n} rows differs from ORT by {diff}")
                if name == "onnxforge":
                    responses[(MODELS[model], n)] = answer
    return responses, check


def _peers(
    args: argparse.Namespace, repo: Path, folder: Path, processes: Processes, log: Log
) -> dict[str, Any]:
    """Start the peers there are environments for; what was started, skipped and why."""
    found, skipped = find_peers(args.peers, tuple(args.peer_names))
    files = {name: repo / name / "1" / "model.onnx" for name in MODELS.values()}
    started, failed = start_peers(found, files, folder / "peers")
    for name, peer in started.items():
        processes.servers[name] = Target(name, peer.pid, peer.port, peer.close)
    skipped |= {name: f"did not start: {why}" for name, why in failed.items()}
    for name, why in skipped.items():
        log(f"SKIPPED {name}: {why}")
    log(f"peers up: {', '.join(f'{n} :{p.port}' for n, p in started.items()) or 'none'}")
    return {
        "home": str(args.peers),
        "started": {name: {"command": p.command, **p.settings} for name, p in started.items()},
        "skipped": skipped,
        "software": peer_software(found),
    }


def prepare(
    args: argparse.Namespace, folder: Path, processes: Processes, log: Log
) -> tuple[Rig, dict[str, Any]]:
    """Build, start every process, check every answer; the rig and the report so far."""
    repo = folder / "repo"
    specs = build_repository(repo, log)
    inputs, payloads = make_requests(specs)
    (folder / "peers").mkdir()
    peers = _peers(args, repo, folder, processes, log)
    processes.servers["onnxforge"] = start_onnxforge(repo, args.serve_args)
    for name in args.servers:
        if name in VARIANTS:
            processes.servers[name] = start_onnxforge(repo, [*args.serve_args, *VARIANTS[name]])
    compute, process = processes.worker(compute_main, str(repo))
    rig = Rig(processes.servers, None, compute, process.pid, payloads, inputs)
    checked = [name for name in processes.servers]
    responses, check = check_answers(rig, checked)
    log(f"answers of {', '.join(checked)} checked against ONNX Runtime "
        f"(max abs diff {max(check.values()):.1e})")  # fmt: skip
    processes.servers["null-aio"] = start_null(processes, "null-aio", null_server_main, responses)
    processes.servers["null-aio-uvloop"] = start_null(
        processes, "null-aio-uvloop", null_uvloop_main, responses
    )
    by_request = {payloads[(m, n)]: responses[(MODELS[m], n)] for m, n in payloads}
    processes.servers["null-sync"] = start_null(processes, "null-sync", null_sync_main, by_request)
    rig.client = processes.worker(client_main)[0]
    report = {
        "models": {
            key: {
                "name": MODELS[key],
                "file_bytes": (repo / MODELS[key] / "1" / "model.onnx").stat().st_size,
                "request_bytes": {str(n): len(payloads[(key, n)]) for n in (1, 64)},
                "response_bytes": {str(n): len(responses[(MODELS[key], n)]) for n in (1, 64)},
            }
            for key in MODELS
        },
        "answer_check_max_abs_diff": check,
        "peers": peers,
        "rss_mib_loaded": {
            name: round(process_tree_rss_kib(t.pid) / 1024, 1) for name, t in rig.servers.items()
        },
        "onnxforge_command": " ".join(
            [
                "python -m onnxforge serve REPOSITORY --port 0 --metrics-port 0 --http-port 0",
                *args.serve_args,
            ]
        ),
    }
    return rig, report
