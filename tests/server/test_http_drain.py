"""SIGTERM under HTTP load: every request is answered in full (and right) or 503, nothing else.

Clients send inferences back to back on keep-alive connections of their own; SIGTERM is
sent once each has had an answer. A client goes on after a 503 (as a load balancer
retrying would), so the drain sees traffic until the server closes its port; the
connection ending is how a client stops. The refusals the clients saw must be the ones
the server counts in its last line, and none cut off.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from onnxforge.builder import load_spec, reference
from tests.server.http_helpers import json_tensor, write_model
from tests.server.processes import ServeProcess

CLIENTS = 4
WAIT = 60.0  # seconds: the bound on every wait (never reached when the server works)
REFUSAL = "server unavailable: the server is shutting down"
STOPPED = re.compile(
    r"stopped: (\d+) answered during the drain, (\d+) refused UNAVAILABLE, (\d+) cut off"
)


class Client(threading.Thread):
    """Infers in a closed loop until its connection ends; counts what it was answered."""

    def __init__(self, port: int, x: np.ndarray, want: np.ndarray, first: threading.Barrier):
        super().__init__(daemon=True)
        self.port, self.want, self.first = port, want, first
        self.body = json.dumps({"inputs": [json_tensor("x", x)]}).encode()
        self.seen: Counter[str] = Counter()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            while True:
                try:
                    connection.request("POST", "/v2/models/tiny/infer", body=self.body)
                    response = connection.getresponse()
                    status, body = response.status, response.read()
                except OSError:  # refused, reset, closed: the server has stopped listening
                    return
                self.seen[self._outcome(status, body)] += 1
                if self.seen["right"] == 1 and status == 200:
                    self.first.wait(WAIT)
        finally:
            connection.close()

    def _outcome(self, status: int, body: bytes) -> str:
        if status == 503 and json.loads(body) == {"error": REFUSAL}:
            return "refused"
        if status != 200:
            return f"status {status}: {body[:200]!r}"
        (y,) = [tensor for tensor in json.loads(body)["outputs"] if tensor["name"] == "y"]
        got = np.reshape(np.asarray(y["data"], dtype=np.float32), y["shape"])
        return "right" if np.allclose(got, self.want, atol=1e-5) else "wrong"


def test_sigterm_answers_every_http_request_in_full_or_503(tmp_path: Path) -> None:
    spec = load_spec(write_model(tmp_path, "tiny"))
    rng = np.random.default_rng(0)
    first = threading.Barrier(CLIENTS + 1)
    with ServeProcess(tmp_path, http=True) as server:
        assert server.http_port is not None
        clients = []
        for _ in range(CLIENTS):
            x = rng.normal(size=(3, 4)).astype(np.float32)
            clients.append(Client(server.http_port, x, reference.forward(spec, x), first))
        for client in clients:
            client.start()
        first.wait(WAIT)  # every client has had a right answer
        assert server.stop(WAIT) == 0, server.output[-3000:]
        for client in clients:
            client.join(WAIT)
            assert not client.is_alive()
        stopped = STOPPED.search(server.output)
        assert stopped, server.output[-3000:]
    seen = sum((client.seen for client in clients), Counter())
    assert set(seen) <= {"right", "refused"}, seen
    _, refused, cut_off = (int(group) for group in stopped.groups())
    assert seen["refused"] == refused >= 1  # requests came during the drain: 503 each
    assert cut_off == 0
