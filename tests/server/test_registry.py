"""The repository as the server sees it: versions, broken files, and --watch reloads."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import yaml

from onnxforge.builder import load_spec, metadata, reference
from onnxforge.client import InferenceClient, ModelNotFound, Unavailable
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server.app import Settings
from tests.helpers import mlp_document, wait_until
from tests.server.conftest import ServerThread


def _spec(folder: Path, name: str, **overrides: Any) -> Path:
    (folder / name).mkdir(parents=True, exist_ok=True)
    path = folder / name / "spec.yaml"
    path.write_text(yaml.safe_dump(mlp_document(name=name, **overrides)))
    return path


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    _spec(tmp_path, "alpha")
    _spec(tmp_path, "beta", seed=3)
    return tmp_path


@pytest.fixture
def watched(repository: Path) -> Iterator[ServerThread]:
    settings = Settings(
        repository=repository, port=0, metrics_port=None, threads=1, watch_seconds=0.1
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


def _index(address: str) -> dict[str, Any]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}


X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


def test_a_corrupt_file_leaves_the_other_models_serving(repository: Path) -> None:
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.onnx").write_bytes(b"\x08\x01 not a model at all")
    server = ServerThread(Settings(repository=repository, port=0, metrics_port=None)).start()
    try:
        index = _index(server.address)
        assert index["broken"].state == "UNAVAILABLE"
        assert index["broken"].reason.startswith("load failed:")
        assert index["alpha"].state == "READY"
        with InferenceClient(server.address) as client:
            assert not client.ready()  # not every model is ready
            got = client.infer("alpha", {"x": X})["y"]
            with pytest.raises(Unavailable) as error:
                client.infer("broken", {"x": X})
        assert error.value.code == "UNAVAILABLE"
        assert "load failed" in error.value.message
        np.testing.assert_allclose(
            got, reference.forward(load_spec(repository / "alpha" / "spec.yaml"), X), atol=1e-6
        )
    finally:
        server.stop()


def test_versions_resolve_newest_first(repository: Path, run_cli: Callable[..., Any]) -> None:
    # Three builds of alpha that compute different things: versions 1, 2 and 3 on disk.
    references = []
    for seed in (0, 5, 7):
        spec = _spec(
            repository,
            "alpha",
            seed=seed,
            serving={"version_policy": {"latest": 2}, "keep_versions": 3},
        )
        assert run_cli("build", spec, "-r", repository).code == 0
        references.append(reference.forward(load_spec(spec), X))
    assert sorted(p.name for p in (repository / "alpha").iterdir() if p.is_dir()) == ["1", "2", "3"]
    server = ServerThread(
        Settings(repository=repository, port=0, metrics_port=None, build_missing=False)
    ).start()
    try:
        with InferenceClient(server.address) as client:
            # latest 2: versions 2 and 3 serve, the newest answers unpinned requests.
            np.testing.assert_allclose(
                client.infer("alpha", {"x": X})["y"], references[2], atol=1e-6
            )
            np.testing.assert_allclose(
                client.infer("alpha", {"x": X}, version="2")["y"], references[1], atol=1e-6
            )
            with pytest.raises(ModelNotFound) as error:
                client.infer("alpha", {"x": X}, version="1")
            assert error.value.code == "NOT_FOUND"
            assert "available versions: 2, 3" in error.value.message
            assert list(client.metadata("alpha").versions) == ["2", "3"]
    finally:
        server.stop()


def test_keep_versions_prunes_old_versions_but_not_foreign_folders(
    repository: Path, run_cli: Callable[..., Any]
) -> None:
    (repository / "alpha" / "9").mkdir(parents=True)  # not a version onnxforge wrote
    (repository / "alpha" / "9" / "notes.txt").write_text("keep me")
    for seed in (0, 5, 7):
        spec = _spec(repository, "alpha", seed=seed)  # keep_versions defaults to 2
        assert run_cli("build", spec, "-r", repository).code == 0
    kept = sorted(p.name for p in (repository / "alpha").iterdir() if p.is_dir())
    assert kept == ["2", "3", "9"]
    assert (repository / "alpha" / "9" / "notes.txt").read_text() == "keep me"


def test_a_rebuild_with_the_same_graph_rewrites_the_newest_version(
    repository: Path, run_cli: Callable[..., Any]
) -> None:
    spec = _spec(repository, "alpha")
    assert run_cli("build", spec, "-r", repository).code == 0
    spec = _spec(repository, "alpha", description="same network, new words")
    assert run_cli("build", spec, "-r", repository).code == 0
    assert not (repository / "alpha" / "2").exists()
    model = onnx.load(str(repository / "alpha" / "1" / "model.onnx"))
    assert metadata.props(model)[metadata.SPEC_SHA256] == load_spec(spec).sha256


def test_watch_reloads_a_changed_spec_without_failing_requests(
    watched: ServerThread, repository: Path
) -> None:
    before = reference.forward(load_spec(repository / "alpha" / "spec.yaml"), X)
    failures: list[BaseException] = []
    answers: list[np.ndarray] = []
    stop = threading.Event()

    def traffic() -> None:
        with InferenceClient(watched.address) as client:
            while not stop.is_set():
                try:
                    answers.append(client.infer("alpha", {"x": X})["y"])
                except Exception as error:  # collected and asserted
                    failures.append(error)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        _spec(repository, "alpha", seed=9)  # new weights
        after = reference.forward(load_spec(repository / "alpha" / "spec.yaml"), X)
        wait_until(
            lambda: bool(answers) and np.allclose(answers[-1], after, atol=1e-6),
            "the new weights answer",
        )
    finally:
        stop.set()
        thread.join(30)
    assert not failures
    # Every answer is exactly one of the two versions: no mixture, no error.
    for answer in answers:
        assert np.allclose(answer, before, atol=1e-6) or np.allclose(answer, after, atol=1e-6)


def test_watch_keeps_the_old_version_when_a_reload_fails(
    watched: ServerThread, repository: Path
) -> None:
    good = reference.forward(load_spec(repository / "beta" / "spec.yaml"), X)
    (repository / "beta" / "1" / "model.onnx").write_bytes(b"garbage")
    wait_until(
        lambda: "load failed" in _index(watched.address)["beta"].reason,
        "the failed reload reported",
    )
    entry = _index(watched.address)["beta"]
    assert entry.state == "READY" and "previous version still serving" in entry.reason
    with InferenceClient(watched.address) as client:
        np.testing.assert_allclose(client.infer("beta", {"x": X})["y"], good, atol=1e-6)


def test_watch_loads_new_models_and_unloads_removed_ones(
    watched: ServerThread, repository: Path
) -> None:
    _spec(repository, "gamma", seed=5)
    wait_until(
        lambda: (
            "gamma" in _index(watched.address) and _index(watched.address)["gamma"].state == "READY"
        ),
        "gamma loaded",
    )
    shutil.rmtree(repository / "alpha")
    wait_until(lambda: _index(watched.address)["alpha"].state == "UNAVAILABLE", "alpha unloaded")
    assert _index(watched.address)["alpha"].reason == "removed from the repository"
    with InferenceClient(watched.address) as client:
        with pytest.raises(Unavailable) as error:
            client.infer("alpha", {"x": X})
        assert error.value.code == "UNAVAILABLE"
        gamma = reference.forward(load_spec(repository / "gamma" / "spec.yaml"), X)
        np.testing.assert_allclose(client.infer("gamma", {"x": X})["y"], gamma, atol=1e-6)


@pytest.mark.parametrize("file_name", ["spec.yml", "spec.json"])
def test_specs_named_yml_or_json_are_built_and_served(tmp_path: Path, file_name: str) -> None:
    import json

    (tmp_path / "gamma").mkdir()
    document = mlp_document(name="gamma", seed=11)
    text = json.dumps(document) if file_name.endswith(".json") else yaml.safe_dump(document)
    (tmp_path / "gamma" / file_name).write_text(text)
    server = ServerThread(Settings(repository=tmp_path, port=0, metrics_port=None)).start()
    try:
        with InferenceClient(server.address) as client:
            got = client.infer("gamma", {"x": X})["y"]
        want = reference.forward(load_spec(tmp_path / "gamma" / file_name), X)
        np.testing.assert_allclose(got, want, atol=1e-6)
    finally:
        server.stop()
