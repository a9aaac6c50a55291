"""The peer servers of ``serving.py``: MLServer and KServe's ModelServer, each from its own
virtual environment (made by ``benchmarks/peers/setup.sh``), each running the same ONNX
files with ONNX Runtime behind the Open Inference Protocol's gRPC service.

- ``mlserver``: ``mlserver start`` with the custom runtime ``peers/mlserver_ort.py``, one
  model folder per model, MLServer's defaults (one inference worker process) but for
  ``debug: false`` (no log line per request);
- ``mlserver-batching``: the same with MLServer's adaptive batching (``max_batch_size`` and
  ``max_batch_time`` as the models' own serving settings: 64 rows, 500 us);
- ``mlserver-inline``, ``mlserver-inline-batching``: the same two with ``parallel_workers:
  0``, inference in the server process itself (no hop to a worker process: on 2 cores about
  twice the throughput of the default on the small model), so that MLServer's best
  configuration is among those measured;
- ``kserve``: ``peers/kserve_ort.py``, a ``kserve.Model`` per file in KServe's ModelServer,
  its defaults but for ``--enable_latency_logging false`` (no log line per request).

A peer whose environment is missing is skipped, with the reason. Each peer runs in a
session of its own; stopping it ends its whole process group (MLServer's workers too).
Its output goes to a log file in the run's scratch folder, read back when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS_SOURCE = HERE / "peers"
DEFAULT_HOME = Path(os.environ.get("ONNXFORGE_PEERS", Path.home() / ".cache/onnxforge-peers"))
#: MLServer's configurations: (adaptive batching, parallel_workers; None: its default, 1).
MLSERVER = {
    "mlserver": (False, None),
    "mlserver-batching": (True, None),
    "mlserver-inline": (False, 0),
    "mlserver-inline-batching": (True, 0),
}
PEERS = ("kserve", *MLSERVER)
ENVIRONMENT = {"kserve": "kserve", **{name: "mlserver" for name in MLSERVER}}
COMMON = ("onnxruntime", "grpcio", "numpy", "protobuf", "uvloop")
VERSIONED = {"mlserver": ("mlserver", *COMMON), "kserve": ("kserve", *COMMON)}
BATCH = {"max_batch_size": 64, "max_batch_time": 0.0005}  # the specs' 64 rows, 500 us


def free_port() -> int:
    """A port free now (the peers need a number; they cannot report what port 0 gave)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment_versions(env: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Versions from the environment's ``pip freeze`` (written by setup.sh)."""
    versions: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (env / "onnxforge-peer-freeze.txt").read_text().splitlines():
            name, _, version = line.partition("==")
            if name.lower() in names:
                versions[name.lower()] = version
    return versions


def find_peers(home: Path, wanted: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, str]]:
    """The environments there are for the wanted peers; the reason for each one skipped."""
    found: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for peer in wanted:
        env = home / ENVIRONMENT[peer]
        executable = env / "bin" / ("mlserver" if peer.startswith("mlserver") else "python")
        if executable.exists():
            found[peer] = env
        else:
            skipped[peer] = (
                f"no environment at {env} (make it with: bash benchmarks/peers/setup.sh "
                f"{ENVIRONMENT[peer]}; ONNXFORGE_PEERS or --peers says where)"
            )
    return found, skipped


@dataclass
class PeerProcess:
    """A peer server started from its environment; ``pid`` is the root of its tree."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    command: list[str]
    settings: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def close(self, seconds: float = 15.0) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after ``seconds``."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(seconds)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def _spawn(name: str, command: list[str], folder: Path, **settings: Any) -> PeerProcess:
    log = folder / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(PEERS_SOURCE), "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    # The runtimes' one knob (their ONNX Runtime threads); onnxforge does not read it.
    settings["ORT_INTRA_OP_THREADS"] = os.environ.get("ORT_INTRA_OP_THREADS", "(unset: default)")
    return PeerProcess(name, process, settings["grpc_port"], log, command, settings)


def start_mlserver(name: str, env: Path, models: dict[str, Path], folder: Path) -> PeerProcess:
    """``mlserver start`` on a folder of model settings written here."""
    batching, workers = MLSERVER[name]
    root = folder / name
    root.mkdir(parents=True)
    settings: dict[str, Any] = {
        "debug": False,  # True (the default) logs every gRPC call at INFO
        "host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_port": free_port(),
        "metrics_port": free_port(),
    }
    if workers is not None:
        settings["parallel_workers"] = workers
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for model, path in models.items():
        (root / model).mkdir()
        model_settings: dict[str, Any] = {
            "name": model,
            "implementation": "mlserver_ort.OnnxRuntimeModel",
            "parameters": {"uri": str(path)},
        }
        if batching:
            model_settings |= BATCH
        (root / model / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    command = [str(env / "bin" / "mlserver"), "start", str(root)]
    shown = {**settings, "adaptive_batching": BATCH if batching else None}
    return _spawn(name, command, root, **shown)


def start_kserve(name: str, env: Path, models: dict[str, Path], folder: Path) -> PeerProcess:
    """``kserve_ort.py`` in KServe's environment, one ``kserve.Model`` per file."""
    root = folder / name
    root.mkdir(parents=True)
    settings = {"grpc_port": free_port(), "http_port": free_port()}
    command = [str(env / "bin" / "python"), str(PEERS_SOURCE / "kserve_ort.py")]
    command += [f"--model={model}={path}" for model, path in models.items()]
    command += [f"--grpc_port={settings['grpc_port']}", f"--http_port={settings['http_port']}"]
    command += ["--enable_latency_logging=false"]  # True (the default) logs every request
    return _spawn(name, command, root, **settings, enable_latency_logging=False)


def wait_ready(peer: PeerProcess, models: list[str], seconds: float = 120.0) -> float:
    """Wait until the peer says every model is ready over gRPC; seconds it took."""
    import grpc

    from onnxforge.protocol.generated import inference_pb2 as pb
    from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc

    began = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{peer.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() - began < seconds:
            if peer.process.poll() is not None:
                break
            try:
                if all(stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=2).ready
                       for m in models):  # fmt: skip
                    return time.monotonic() - began
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    peer.close()
    raise RuntimeError(f"{peer.name} did not get ready:\n{peer.output()}")


def start_peers(
    found: dict[str, Path], models: dict[str, Path], folder: Path
) -> tuple[dict[str, PeerProcess], dict[str, str]]:
    """Start every peer found (all at once, then wait); those that failed, with why."""
    started: dict[str, PeerProcess] = {}
    failed: dict[str, str] = {}
    for peer, env in found.items():
        if peer == "kserve":
            started[peer] = start_kserve(peer, env, models, folder)
        else:
            started[peer] = start_mlserver(peer, env, models, folder)
    for peer in list(started):
        try:
            started[peer].settings["ready_after_s"] = round(wait_ready(started[peer], [*models]), 1)
        except RuntimeError as error:
            failed[peer] = str(error)[-1500:]
            del started[peer]
    return started, failed


def peer_software(found: dict[str, Path]) -> dict[str, dict[str, str]]:
    return {
        peer: {"environment": str(env), **environment_versions(env, VERSIONED[ENVIRONMENT[peer]])}
        for peer, env in found.items()
    }
