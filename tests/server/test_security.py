"""TLS, mutual TLS and bearer tokens, with certificates made for the test."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onnxforge.client import InferenceClient, InferenceServerError, Unauthenticated, Unavailable
from onnxforge.server.app import Settings
from onnxforge.server.security import Security
from tests.conftest import MODELS
from tests.server.certs import issue, make_ca
from tests.server.conftest import ServerThread

X = np.random.default_rng(0).uniform(size=(2, 64)).astype(np.float32)
TOKEN = "s3cret-token-for-tests"
ADMIN = "admin-token-for-tests"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("repo")
    (folder / "digits-mlp").mkdir()
    for file in ("spec.yaml", "weights.npz"):
        shutil.copy(MODELS / "digits-mlp" / file, folder / "digits-mlp" / file)
    (folder / "digits-mlp" / "spec.yaml").write_text(
        (folder / "digits-mlp" / "spec.yaml")
        .read_text()
        .replace("variants: [fp32, fp16, int8-dynamic, int8-static]", "variants: [fp32]")
    )
    return folder


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(folder, "test-ca")
    other_ca, other_key = make_ca(folder, "other-ca")
    return {
        "ca": ca,
        "server": issue(folder, ca, ca_key, "server", server=True),
        "client": issue(folder, ca, ca_key, "client", server=False),
        "stranger": issue(folder, other_ca, other_key, "stranger", server=False),
    }


def _serve(repository: Path, security: Security) -> ServerThread:
    settings = Settings(
        repository=repository, port=0, metrics_port=None, threads=1, security=security
    )
    return ServerThread(settings).start()


@pytest.fixture(scope="module")
def mtls(repository: Path, pki: dict[str, Any]) -> Iterator[ServerThread]:
    security = Security(
        tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_client_ca=pki["ca"].cert
    )
    server = _serve(repository, security)
    yield server
    server.stop()


def test_mutual_tls_serves_clients_with_a_certificate(mtls: ServerThread, pki: dict) -> None:
    with InferenceClient(
        mtls.address, tls_ca=pki["ca"].cert, tls_cert=pki["client"].cert, tls_key=pki["client"].key
    ) as client:
        assert client.infer("digits-mlp", {"x": X})["probabilities"].shape == (2, 10)


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate", "plaintext"])
def test_mutual_tls_refuses_everyone_else_at_the_handshake(
    mtls: ServerThread, pki: dict, who: str
) -> None:
    options: dict[str, Any] = {"tls_ca": pki["ca"].cert}
    if who == "another CA's certificate":
        options.update(tls_cert=pki["stranger"].cert, tls_key=pki["stranger"].key)
    if who == "plaintext":
        options = {}
    with InferenceClient(mtls.address, **options) as client, pytest.raises(Unavailable) as error:
        client.live()
    assert error.value.code == "UNAVAILABLE"  # no connection was established


@pytest.fixture(scope="module")
def guarded(repository: Path) -> Iterator[ServerThread]:
    server = _serve(repository, Security(tokens=(TOKEN, "second-token"), admin_tokens=(ADMIN,)))
    yield server
    server.stop()


def test_tokens_guard_every_rpc_but_health_and_live(guarded: ServerThread) -> None:
    with InferenceClient(guarded.address) as anonymous:
        assert anonymous.live()  # open
        for call in (
            lambda: anonymous.ready(),
            lambda: anonymous.metadata("digits-mlp"),
            lambda: anonymous.infer("digits-mlp", {"x": X}),
        ):
            with pytest.raises(Unauthenticated) as error:
                call()
            assert error.value.code == "UNAUTHENTICATED"
            assert "authorization: Bearer" in error.value.message
    with grpc.insecure_channel(guarded.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="")).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        # List is a health check too (a probe needs no token), from our own generated code.
        from onnxforge.protocol.generated import health_pb2 as ours
        from onnxforge.protocol.generated import health_pb2_grpc as ours_grpc

        listed = ours_grpc.HealthStub(channel).List(ours.HealthListRequest())
        assert listed.statuses[""].status == ours.HealthCheckResponse.SERVING
        assert listed.statuses["digits-mlp"].status == ours.HealthCheckResponse.SERVING
    with (
        InferenceClient(guarded.address, token="wrong") as wrong,
        pytest.raises(Unauthenticated) as error,
    ):
        wrong.infer("digits-mlp", {"x": X})
    assert error.value.code == "UNAUTHENTICATED"
    assert "a wrong token" in error.value.message
    for token in (TOKEN, "second-token"):
        with InferenceClient(guarded.address, token=token) as client:
            assert client.infer("digits-mlp", {"x": X})["probabilities"].shape == (2, 10)


def test_model_control_needs_the_admin_token(guarded: ServerThread) -> None:
    from onnxforge.protocol.generated import inference_pb2 as pb
    from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(guarded.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.RepositoryModelLoadRequest(model_name="digits-mlp")
        with pytest.raises(grpc.RpcError) as error:
            stub.RepositoryModelLoad(request, metadata=[("authorization", f"Bearer {TOKEN}")])
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "admin token" in error.value.details()
        stub.RepositoryModelLoad(request, metadata=[("authorization", f"Bearer {ADMIN}")])


def test_model_control_can_be_switched_off(repository: Path) -> None:
    from onnxforge.protocol.generated import inference_pb2 as pb
    from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc

    server = _serve(repository, Security(model_control=False))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="digits-mlp"))
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert stub.ModelReady(pb.ModelReadyRequest(name="digits-mlp")).ready
    finally:
        server.stop()


def test_tokens_never_reach_the_logs(repository: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = _serve(repository, Security(tokens=(TOKEN,)))
    try:
        for token in (TOKEN, "wrong-token-value"):
            with (
                InferenceClient(server.address, token=token) as client,
                contextlib.suppress(InferenceServerError),
            ):
                client.infer("digits-mlp", {"x": X})
    finally:
        server.stop()
    assert caplog.records  # the server did log
    assert TOKEN not in caplog.text and "wrong-token-value" not in caplog.text


def test_token_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxforge.server.security import TOKENS_ENV, SecurityError, read_tokens

    file = tmp_path / "tokens"
    file.write_text("# team tokens\nalpha\n\n  beta  \n")
    monkeypatch.setenv(TOKENS_ENV, "gamma, delta")
    assert Security.from_options(file).tokens == ("alpha", "beta", "gamma", "delta")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(SecurityError, match="holds no tokens"):
        read_tokens(tmp_path / "empty")
    with pytest.raises(SecurityError, match="go together"):
        Security.from_options(tls_cert=file)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("my-host.example", False),
    ],
)
def test_which_binds_count_as_local(host: str, loopback: bool) -> None:
    # Binding anything that is not loopback without TLS logs a warning (server.app).
    from onnxforge.server.app import _loopback

    assert _loopback(host) is loopback
