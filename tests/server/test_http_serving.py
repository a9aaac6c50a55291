"""HTTP/REST beside gRPC as deployed: TLS with gRPC's certificate, ``--workers`` on one port."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxforge.builder import load_spec, reference
from tests.conftest import REPO_ROOT
from tests.server.certs import issue, make_ca
from tests.server.http_helpers import call, json_tensor, outputs_of, write_model
from tests.server.processes import ServeProcess

WORKERS = 2


def _body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [json_tensor("x", x)]}).encode()


def test_tls_serves_https_with_the_same_certificate_and_client_ca(tmp_path: Path) -> None:
    spec = load_spec(write_model(tmp_path / "repo", "tiny"))
    ca, ca_key = make_ca(tmp_path)
    server_pair = issue(tmp_path, ca, ca_key, "server", server=True)
    client_pair = issue(tmp_path, ca, ca_key, "client", server=False)
    tls = ("--tls-cert", str(server_pair.cert), "--tls-key", str(server_pair.key))
    mutual = ("--tls-client-ca", str(ca.cert))
    with ServeProcess(tmp_path / "repo", *tls, *mutual, http=True) as server:
        assert server.http_port is not None
        assert f"HTTP on https://127.0.0.1:{server.http_port}" in server.output
        x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)

        def https(with_client_cert: bool) -> tuple[int, bytes]:
            context = ssl.create_default_context(cafile=str(ca.cert))
            if with_client_cert:
                context.load_cert_chain(client_pair.cert, client_pair.key)
            connection = http.client.HTTPSConnection(
                "127.0.0.1", server.http_port, context=context, timeout=60
            )
            try:
                connection.request("POST", "/v2/models/tiny/infer", body=_body(x))
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        status, body = https(with_client_cert=True)
        assert status == 200
        got = json.loads(body)["outputs"][0]
        assert got["name"] == "y"
        want = reference.forward(spec, x)
        np.testing.assert_allclose(np.reshape(got["data"], got["shape"]), want, atol=1e-5)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https(with_client_cert=False)  # mutual TLS: no certificate, no answer
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            call(f"http://127.0.0.1:{server.http_port}", "GET", "/v2/health/live")


def test_every_worker_serves_http_on_the_one_port(tmp_path: Path) -> None:
    spec = load_spec(write_model(tmp_path, "tiny"))
    pattern = rf"serving with {WORKERS} workers on 127\.0\.0\.1:(\d+)"
    with ServeProcess(tmp_path, "--workers", str(WORKERS), http=True, pattern=pattern) as server:
        assert server.http_port is not None
        url = server.http_url
        # Each worker's own "serving" line names the shared HTTP port.
        worker_lines = re.findall(
            rf"serving \d+ model\(s\) from .*, HTTP on {re.escape(url)} ", server.output
        )
        assert len(worker_lines) == WORKERS, server.output[-3000:]
        rng = np.random.default_rng(1)
        requests = 12
        for _ in range(requests):  # a connection each: the kernel spreads them
            x = rng.normal(size=(2, 4)).astype(np.float32)
            got = outputs_of(call(url, "POST", "/v2/models/tiny/infer", _body(x)))
            np.testing.assert_allclose(got["y"], reference.forward(spec, x), atol=1e-5)
        stats = call(url, "GET", "/v2/models/tiny/versions/1/stats").json()["model_stats"]
        assert stats[0]["inference_count"] == requests * 2  # added up over the workers
        # A control call reaches every worker, whichever connection asks after it.
        assert call(url, "POST", "/v2/repository/models/tiny/unload", b"{}").status == 200
        assert {call(url, "GET", "/v2/models/tiny/ready").status for _ in range(8)} == {400}
        assert call(url, "POST", "/v2/repository/models/tiny/load", b"{}").status == 200
        assert {call(url, "GET", "/v2/models/tiny/ready").status for _ in range(8)} == {200}


def test_a_taken_http_port_stops_the_server_saying_which_flags_help(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "onnxforge", "serve", str(tmp_path), "--port", "0"]
        command += ["--no-metrics", "--threads", "1", "--http-port", str(port)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode != 0
    assert f"cannot bind HTTP/REST to 127.0.0.1:{port}" in done.stderr
    assert "choose another --http-port, or --no-http" in done.stderr
    assert "Traceback" not in done.stderr
