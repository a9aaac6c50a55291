"""Setting up ``serving.py``'s run: the processes it starts and what it measures at rest.

The model repository built by ``onnxforge build``, the servers' memory with no model and
with the bundled ``models/``, a fresh process's memory after loading (``memory_probe``), the
prebuilt requests, the two onnxforge servers (the harness's ``ServerProcess``), (a), the
answers checked against ONNX Runtime, (b) serving those answers, and the load processes.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from serving_cells import Rig, Target
from serving_report import models_section
from serving_workers import (
    METHOD,
    MODELS,
    REQUEST_TIMEOUT_S,
    client_main,
    compute_main,
    memory_probe,
    null_server_main,
)

from onnxforge.bench import ServerProcess, process_status

ROOT = Path(__file__).resolve().parent.parent
INPUT_SEED = 3
Log = Callable[[str], None]


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


def start_onnxforge(repo: Path, config: str, threads: int) -> Target:
    """``python -m onnxforge serve`` (the harness's process); batching off for "off"."""
    extra = ["--host", "127.0.0.1", "--no-build", "--log-level", "info"]
    if config == "off":
        extra.append("--no-batching")
    server = ServerProcess(repo, *extra, threads=threads, cwd=ROOT)
    return Target(config, server.pid, server.port, lambda: _close(server, 20.0))


def _close(server: ServerProcess, seconds: float) -> None:
    server.close(seconds)


def start_null(processes: Processes, responses: dict[tuple[str, int], bytes]) -> Target:
    """(b), answering the real answers recorded from onnxforge."""
    parent, null = processes.start(null_server_main, responses)
    if not parent.poll(60):
        raise RuntimeError("the do-nothing server did not start")

    def stop() -> None:
        with contextlib.suppress(OSError):
            parent.send("stop")
        _join(null)

    return Target("null", null.pid, parent.recv(), stop)


def settle_rss(pid: int, seconds: float = 0.5) -> dict[str, int]:
    time.sleep(seconds)
    return process_status(pid)


# ----------------------------------------------------------------------------- preparing


def build_repository(repo: Path, log: Log) -> dict[str, Path]:
    """The two examples built fp32 into ``repo`` by ``onnxforge build``; their spec paths."""
    specs = {key: ROOT / "models" / name / "spec.yaml" for key, name in MODELS.items()}
    build = subprocess.run(
        [sys.executable, "-m", "onnxforge", "build", *map(str, specs.values()), "--variants",
         "fp32", "--repository", str(repo), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if build.returncode != 0:
        raise RuntimeError(f"onnxforge build failed:\n{build.stderr[-2000:]}")
    log(f"built {', '.join(MODELS.values())} (fp32) into {repo}")
    return specs


def server_memory(folder: Path, threads: int, log: Log) -> dict[str, Any]:
    """RSS of a server with no model, and with the bundled repository (every variant)."""
    memory: dict[str, Any] = {}
    empty = folder / "empty"
    empty.mkdir()
    bundled = ROOT / "models"
    for label, where in (("empty_repository", empty), ("bundled_models", bundled)):
        server = start_onnxforge(where, f"memory-{label}", threads)
        status = settle_rss(server.pid, 1.0)
        server.close()
        files = sorted(where.glob("*/[0-9]*/model.onnx"))
        memory[label] = {
            "repository": str(where.relative_to(ROOT)) if where == bundled else "(empty)",
            "models": [f.parent.parent.name for f in files],
            "model_file_bytes": sum(f.stat().st_size for f in files),
            "rss_mib": round(status.get("VmRSS", 0) / 1024, 1),
            "peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
            "threads": status.get("Threads"),
        }
        log(f"RSS with {label.replace('_', ' ')}: {memory[label]['rss_mib']} MiB")
    return memory


def probe_memory(processes: Processes, repo: Path, threads: int, log: Log) -> dict[str, Any]:
    """What a fresh process holds after loading the repositories (``memory_probe``)."""
    memory: dict[str, Any] = {}
    for key, where, sessions in (("probe", repo, True), ("probe_bundled", ROOT / "models", False)):
        parent, probe = processes.start(memory_probe, str(where), threads, sessions)
        if not parent.poll(120):
            probe.kill()
            raise RuntimeError("the memory probe did not answer")
        memory[key] = parent.recv()
        probe.join(10)
    wide_mib = (repo / MODELS["wide"] / "1" / "model.onnx").stat().st_size / 2**20
    probe = memory["probe"]
    probe["wide_file_mib"] = round(wide_mib, 1)
    probe["per_extra_wide_session_mib"] = round(
        (probe["two_more_wide_sessions_mib"] - probe["after_runs_mib"]) / 2, 1
    )
    log(f"memory probe: {probe}")
    return memory


def make_requests(
    specs: dict[str, Path],
) -> tuple[dict[tuple[str, int], np.ndarray], dict[tuple[str, int], bytes]]:
    """Inputs of 1 and 64 rows per model, and their prebuilt ModelInfer request bytes."""
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


def check_answers(rig: Rig) -> tuple[dict[tuple[str, int], bytes], dict[str, float]]:
    """Both onnxforge servers' answers against ONNX Runtime; the answers, the differences."""
    import grpc

    from onnxforge.protocol.generated import inference_pb2 as pb

    responses: dict[tuple[str, int], bytes] = {}
    check: dict[str, float] = {}
    for config in ("on", "off"):
        with grpc.insecure_channel(f"127.0.0.1:{rig.servers[config].port}") as channel:
            call = channel.unary_unary(METHOD)
            for (model, n), payload in rig.payloads.items():
                answer = call(payload, timeout=REQUEST_TIMEOUT_S)
                rig.compute.send(("outputs", MODELS[model], rig.inputs[(model, n)]))
                expected = rig.compute.recv()
                decoded = pb.ModelInferResponse.FromString(answer)
                got = {
                    t.name: np.frombuffer(raw, "<f4").reshape(t.shape)
                    for t, raw in zip(decoded.outputs, decoded.raw_output_contents, strict=True)
                }
                if set(got) != set(expected):
                    raise RuntimeError(f"{config} answered outputs {sorted(got)}")
                diff = max(float(np.max(np.abs(got[k] - expected[k]))) for k in got)
                check[f"{config} {model} {n} rows"] = diff
                if diff > 1e-5:
                    raise RuntimeError(f"{config} {model} {n} rows differs from ORT by {diff}")
                responses[(MODELS[model], n)] = answer
    return responses, check


def prepare(
    args: argparse.Namespace, folder: Path, processes: Processes, log: Log
) -> tuple[Rig, dict[str, Any]]:
    """Build, measure memory at rest, start every process; the rig and the report so far."""
    repo = folder / "repo"
    specs = build_repository(repo, log)
    memory = server_memory(folder, args.threads, log)
    memory |= probe_memory(processes, repo, args.threads, log)
    inputs, payloads = make_requests(specs)
    for config in ("off", "on"):
        processes.servers[config] = start_onnxforge(repo, config, args.threads)
    loaded = {c: settle_rss(processes.servers[c].pid, 0.5) for c in ("off", "on")}
    log(
        f"onnxforge servers up: {', '.join(f'{c} :{s.port}' for c, s in processes.servers.items())}"
    )
    compute, process = processes.worker(compute_main, str(repo))
    rig = Rig(processes.servers, [], compute, process.pid, payloads, inputs)
    # The real answers: checked against ONNX Runtime, then served by the do-nothing server.
    responses, check = check_answers(rig)
    log(f"answers checked against ONNX Runtime (max abs diff {max(check.values()):.1e})")
    processes.servers["null"] = start_null(processes, responses)
    loaded["null"] = settle_rss(processes.servers["null"].pid, 0.3)
    for _ in range(2 if args.two_clients_from else 1):
        rig.clients.append(processes.worker(client_main)[0])
    report = {
        "models": models_section(repo, payloads, responses),
        "answer_check_max_abs_diff": max(check.values()),
        "memory": memory,
        "loaded": loaded,
    }
    return rig, report
