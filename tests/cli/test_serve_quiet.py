"""``onnxforge -q serve``: the server runs and answers, and logs only what goes wrong."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from onnxforge.client import InferenceClient, InferenceServerError
from tests.cli.test_infer_bench import digits_repository
from tests.conftest import REPO_ROOT
from tests.helpers import wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ready(url: str) -> bool:
    with InferenceClient(url) as client:
        try:
            return client.ready("digits-mlp")
        except InferenceServerError:  # not listening yet
            return False


def test_quiet_serve_prints_no_info_lines(tmp_path: Path) -> None:
    repository = digits_repository(tmp_path / "repo")
    port = free_port()
    command = [sys.executable, "-m", "onnxforge", "-q", "serve", str(repository)]
    command += ["--port", str(port), "--http-port", "0", "--metrics-port", "0", "--threads", "1"]
    server = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"127.0.0.1:{port}"
        wait_until(lambda: server.poll() is not None or ready(url), "the server is ready", 120)
        assert server.poll() is None, "the server exited"
        with InferenceClient(url) as client:
            got = client.infer("digits-mlp", {"x": np.zeros((1, 64), np.float32)})
        assert got["probabilities"].shape == (1, 10)
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, output
    assert " INFO " not in output, output  # not even "serving ..." or "stopped ..."
