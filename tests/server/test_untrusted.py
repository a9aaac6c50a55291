"""Files in the repository are not trusted: escapes, huge files and garbage stay contained."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from onnxforge.client import InferenceClient
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server.app import Settings
from tests.helpers import mlp_document
from tests.server.conftest import ServerThread

X = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)


def _model(folder: Path, name: str) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "spec.yaml").write_text(yaml.safe_dump(mlp_document(name=name)))


def test_escapes_huge_files_and_garbage_are_contained(tmp_path: Path) -> None:
    repository, outside = tmp_path / "repo", tmp_path / "outside"
    _model(repository, "good")
    _model(outside, "secret")
    ServerThread(Settings(repository=outside, port=0, metrics_port=None)).start().stop()
    os.symlink(outside / "secret", repository / "linked")  # a folder pointing outside
    (repository / "filelink" / "1").mkdir(parents=True)  # a model file pointing outside
    os.symlink(
        outside / "secret" / "1" / "model.onnx", repository / "filelink" / "1" / "model.onnx"
    )
    _model(repository, "huge")
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.onnx").write_bytes(os.urandom(4096))
    (repository / "badspec").mkdir()
    (repository / "badspec" / "spec.yaml").write_text("name: [unclosed\n")
    settings = Settings(
        repository=repository, port=0, metrics_port=None, threads=1, max_model_bytes=3000
    )
    # The small mlp files are ~600 bytes; make "huge" big with a long description.
    document = mlp_document(name="huge", description="x" * 5000)
    (repository / "huge" / "spec.yaml").write_text(yaml.safe_dump(document))
    server = ServerThread(settings).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
            assert "linked" not in index  # never even looked at
            assert index["filelink"].state == "UNAVAILABLE"
            assert "points outside the repository" in index["filelink"].reason
            assert index["huge"].state == "UNAVAILABLE"
            assert "over the limit of 3,000 (--max-model-bytes)" in index["huge"].reason
            assert index["broken"].state == "UNAVAILABLE"
            assert index["broken"].reason.startswith("load failed:")
            assert index["badspec"].state == "UNAVAILABLE"
            assert "build failed" in index["badspec"].reason
            assert index["good"].state == "READY"
            for name in ("linked", "../outside/secret", "/etc/passwd", "good/../../outside"):
                with pytest.raises(grpc.RpcError) as error:
                    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name))
                assert error.value.code() == grpc.StatusCode.NOT_FOUND, name
        with InferenceClient(server.address) as client:
            assert client.infer("good", {"x": X})["y"].shape == (3, 2)
    finally:
        server.stop()


def test_a_busy_port_is_an_error_not_a_shared_port(tmp_path: Path) -> None:
    _model(tmp_path, "good")
    first = ServerThread(Settings(repository=tmp_path, port=0, metrics_port=None)).start()
    try:
        assert first.running is not None
        second = ServerThread(
            Settings(repository=tmp_path, port=first.running.port, metrics_port=None)
        )
        with pytest.raises(OSError, match=r"cannot bind .* \(in use"):
            second.start()
        second.thread.join(10)
    finally:
        first.stop()
    shutil.rmtree(tmp_path / "good")


def test_liveness_stays_serving_when_a_model_is_broken(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _model(tmp_path, "good")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    server = ServerThread(Settings(repository=tmp_path, port=0, metrics_port=None)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=service)).status

            assert status("onnxforge.Live") == health_pb2.HealthCheckResponse.SERVING
            assert status("") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert status("good") == health_pb2.HealthCheckResponse.SERVING
            assert status("broken") == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop()


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    import stat

    _model(tmp_path, "good")
    ServerThread(Settings(repository=tmp_path, port=0, metrics_port=None)).start().stop()
    for file in (tmp_path / "good" / "1" / "model.onnx", tmp_path / "good" / "config.pbtxt"):
        assert file.stat().st_mode & stat.S_IROTH, file  # with the usual umask 022
