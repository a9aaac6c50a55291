"""``serve --workers 2``: two processes on one port that behave as one server."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxforge.builder import load_spec, reference
from onnxforge.client import InferenceClient
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server.peers import PEER_HEADER
from onnxforge.server.security import INTERNAL_TOKEN_ENV
from tests.conftest import MODELS
from tests.helpers import wait_until
from tests.server.processes import ServeProcess

PEER_TOKEN = "peer-token-for-tests"
AS_PEER = [(PEER_HEADER, "1"), ("authorization", f"Bearer {PEER_TOKEN}")]

SPEC = load_spec(MODELS / "digits-mlp" / "spec.yaml")


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    repository = tmp_path_factory.mktemp("repo")
    (repository / "digits-mlp").mkdir()
    for file in ("spec.yaml", "weights.npz"):
        shutil.copy(MODELS / "digits-mlp" / file, repository / "digits-mlp" / file)
    os.environ[INTERNAL_TOKEN_ENV] = PEER_TOKEN  # inherited by the server: we may act as a peer
    try:
        server = ServeProcess(
            repository, "--workers", "2", pattern=r"serving with 2 workers on 127\.0\.0\.1:(\d+)"
        )
    finally:
        del os.environ[INTERNAL_TOKEN_ENV]
    yield server
    server.close()


def _stub(address: str) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _local_successes(control_port: str) -> int:
    """One worker's own count, asked on its private port as a peer would."""
    channel, stub = _stub(f"127.0.0.1:{control_port}")
    with channel:
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits-mlp"), metadata=AS_PEER)
    return stats.model_stats[0].inference_stats.success.count if stats.model_stats else 0


def test_workers_share_the_port_and_add_up(workers: ServeProcess) -> None:
    log = "".join(workers.lines)
    controls = re.findall(r"worker \d: pid \d+, control port 127\.0\.0\.1:(\d+)", log)
    assert len(controls) == 2, log
    sent = 60
    for i in range(sent):  # a new connection each time: the kernel spreads them
        x = np.random.default_rng(i).uniform(size=(2, 64)).astype(np.float32)
        with InferenceClient(workers.url) as client:
            got = client.infer("digits-mlp", {"x": x})["probabilities"]
        np.testing.assert_allclose(got, reference.forward(SPEC, x), atol=1e-6)
    per_worker = [_local_successes(port) for port in controls]
    assert all(count > 0 for count in per_worker), per_worker  # both served
    channel, stub = _stub(workers.url)
    with channel:
        total = stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits-mlp"))
        assert total.model_stats[0].inference_stats.success.count == sent == sum(per_worker)
        assert total.model_stats[0].inference_count == 2 * sent
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
    metrics_port = re.search(r"serving with 2 workers on .*\(metrics: (\d+)\)", log)
    assert metrics_port is not None
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port.group(1)}/metrics").read()
    found = re.search(rb'onnxforge_requests_total\{model="digits-mlp",status="OK"\} (\S+)', text)
    assert found is not None and float(found.group(1)) == sent
    assert re.search(rb"^onnxforge_models_loaded 4\.0$", text, re.M)


def test_unload_and_load_reach_every_worker(workers: ServeProcess) -> None:
    def ready_everywhere(name: str) -> set[bool]:
        answers = set()
        for _ in range(12):  # fresh connections land on either worker
            channel, stub = _stub(workers.url)
            with channel:
                answers.add(stub.ModelReady(pb.ModelReadyRequest(name=name)).ready)
        return answers

    channel, stub = _stub(workers.url)
    with channel:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="digits-mlp-fp16"))
        assert ready_everywhere("digits-mlp-fp16") == {False}
        assert stub.ServerReady(pb.ServerReadyRequest()).ready  # unloaded on purpose
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="digits-mlp-fp16"))
        assert ready_everywhere("digits-mlp-fp16") == {True}


def test_a_model_is_ready_only_when_it_is_ready_in_every_worker(workers: ServeProcess) -> None:
    controls = re.findall(
        r"worker \d: pid \d+, control port 127\.0\.0\.1:(\d+)", "".join(workers.lines)
    )
    alone, alone_stub = _stub(f"127.0.0.1:{controls[0]}")
    with alone:  # unload in worker 0 only, as a peer would (the header stops forwarding)
        alone_stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="digits-mlp-int8-static"),
            metadata=AS_PEER,
        )
    other, other_stub = _stub(f"127.0.0.1:{controls[1]}")
    with other:
        request = pb.ModelReadyRequest(name="digits-mlp-int8-static")
        assert other_stub.ModelReady(request, metadata=AS_PEER).ready  # itself
        assert not other_stub.ModelReady(request).ready  # but not in every worker
    channel, stub = _stub(workers.url)
    with channel:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="digits-mlp-int8-static"))
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits-mlp-int8-static")).ready


def test_a_client_cannot_pose_as_a_peer(workers: ServeProcess) -> None:
    """The peer mark without the internal token is ignored: the unload reaches every worker."""
    channel, stub = _stub(workers.url)
    with channel:
        stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="digits-mlp-fp16"),
            metadata=[(PEER_HEADER, "1")],
        )
    controls = re.findall(
        r"worker \d: pid \d+, control port 127\.0\.0\.1:(\d+)", "".join(workers.lines)
    )
    for port in controls:
        own, own_stub = _stub(f"127.0.0.1:{port}")
        with own:
            request = pb.ModelReadyRequest(name="digits-mlp-fp16")
            assert not own_stub.ModelReady(request, metadata=AS_PEER).ready
    channel, stub = _stub(workers.url)
    with channel:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="digits-mlp-fp16"))


def test_sigterm_stops_every_worker_with_exit_0(workers: ServeProcess) -> None:
    assert workers.stop() == 0
    workers.closed.wait(30)
    log = "".join(workers.lines)
    assert "stopped 2 workers (exit codes [0, 0])" in log
    assert log.count("0 cut off") == 2


def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    (tmp_path / "digits-mlp").mkdir()
    for file in ("spec.yaml", "weights.npz"):
        shutil.copy(MODELS / "digits-mlp" / file, tmp_path / "digits-mlp" / file)
    server = ServeProcess(
        tmp_path, "--workers", "2", pattern=r"serving with 2 workers on 127\.0\.0\.1:(\d+)"
    )
    try:
        pids = [int(pid) for pid in re.findall(r"worker \d+: pid (\d+)", "".join(server.lines))]
        assert len(pids) == 2
        server.process.kill()  # SIGKILL: the parent cannot tell its workers anything
        server.process.wait(30)
        wait_until(lambda: not any(_running(pid) for pid in pids), "the workers exit", seconds=60)
        server.closed.wait(30)
        assert "the parent process is gone: shutting down" in "".join(server.lines)
    finally:
        server.close()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's wait is missing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_workers_auto_starts_one_per_usable_core(tmp_path: Path) -> None:
    from onnxforge.cpus import usable_cpus

    (tmp_path / "digits-mlp").mkdir()
    for file in ("spec.yaml", "weights.npz"):
        shutil.copy(MODELS / "digits-mlp" / file, tmp_path / "digits-mlp" / file)
    expected = usable_cpus()
    started = (
        rf"serving with {expected} workers on 127\.0\.0\.1:(\d+)"
        if expected > 1
        else r"serving \d+ model\(s\) from .* on 127\.0\.0\.1:(\d+)"
    )
    server = ServeProcess(tmp_path, "--workers", "auto", pattern=started)
    try:
        with InferenceClient(server.url) as client:
            x = np.random.default_rng(2).uniform(size=(3, 64)).astype(np.float32)
            got = client.infer("digits-mlp", {"x": x})["probabilities"]
        np.testing.assert_allclose(got, reference.forward(SPEC, x), atol=1e-5, rtol=1e-4)
    finally:
        server.close()
