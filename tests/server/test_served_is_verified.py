"""What a real ``onnxforge serve`` answers is always a verified file of the current spec.

Each test drives a server process the way a user does -- editing specs under ``--watch``,
building variants that their budget refuses, loading a model that is only a spec -- and
compares every answer with the NumPy reference of the spec as it is on disk at that moment.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from onnxforge.builder import load_spec, reference
from onnxforge.client import (
    AsyncInferenceClient,
    InferenceClient,
    InferenceServerError,
    Unavailable,
)
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from tests.helpers import mlp_document, wait_until
from tests.server.processes import ServeProcess

X = np.random.default_rng(4).normal(size=(6, 4)).astype(np.float32)
WAIT = 60.0  # seconds: each wait may include a build of the spec
PATTERN = r"serving \d+ model\(s\) from .* on 127\.0\.0\.1:(\d+)"


def _write(repository: Path, name: str, document: dict[str, Any] | str) -> Path:
    (repository / name).mkdir(parents=True, exist_ok=True)
    path = repository / name / "spec.yaml"
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    # A new mtime even when two edits land within the clock's resolution.
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns <= previous:
        import os

        os.utime(path, ns=(previous + 1_000_000, previous + 1_000_000))
    return path


def _index(url: str) -> dict[str, tuple[str, str, list[str]]]:
    """name -> (state, reason, versions) as RepositoryIndex tells it."""
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        found: dict[str, tuple[str, str, list[str]]] = {}
        for model in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models:
            state, reason, versions = found.get(model.name, (model.state, model.reason, []))
            found[model.name] = (state, reason, [*versions, model.version])
        return found


def _answers(url: str, model: str, spec: Path, version: str = "") -> bool:
    """Whether ``model`` answers X exactly as the NumPy reference of ``spec`` now says."""
    want = reference.forward(load_spec(spec), X)
    try:
        with InferenceClient(url) as client:
            got = client.infer(model, {"x": X}, version=version)["y"]
    except InferenceServerError:
        return False
    return bool(np.allclose(got, want, atol=1e-5, rtol=1e-4))


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def watched(repository: Path) -> Iterator[ServeProcess]:
    _write(repository, "tiny", mlp_document(layers=_layers(16)))
    server = ServeProcess(repository, "--watch", "--watch-interval", "0.1", pattern=PATTERN)
    yield server
    server.close()


def _layers(units: int, activation: str = "relu") -> list[dict[str, Any]]:
    return [
        {"type": "dense", "units": units, "activation": activation},
        {"type": "dense", "units": 2, "activation": "softmax"},
    ]


def test_watch_recovers_from_a_failed_build(watched: ServeProcess, repository: Path) -> None:
    spec = repository / "tiny" / "spec.yaml"
    assert _answers(watched.url, "tiny", spec)
    good = spec.read_text()
    # A typo: the old version keeps serving, and the index says why nothing changed.
    _write(repository, "tiny", good.replace("activation: relu", "activaton: relu"))
    state, reason, _ = wait_until(
        lambda: (i := _index(watched.url)["tiny"])[1] and i,
        "the failed build is reported",
        seconds=WAIT,
    )
    assert state == "READY" and "build failed" in reason and "activaton" in reason
    with InferenceClient(watched.url) as client:
        served = client.infer("tiny", {"x": X})["y"]
    np.testing.assert_allclose(served, reference.forward(load_spec_text(good, repository), X), 1e-4)
    # Fixed and changed: the new network serves, as a new version, and the reason is gone.
    changed = _write(repository, "tiny", mlp_document(layers=_layers(20)))
    wait_until(
        lambda: _answers(watched.url, "tiny", changed),
        "the fixed spec's network serves",
        seconds=WAIT,
    )
    state, reason, versions = _index(watched.url)["tiny"]
    assert (state, reason, versions) == ("READY", "", ["2"])


def load_spec_text(text: str, repository: Path) -> Any:
    scratch = repository.parent / "scratch" / "tiny"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "spec.yaml").write_text(text)
    return load_spec(scratch / "spec.yaml")


def test_a_new_model_whose_first_spec_was_broken_serves_once_fixed(
    watched: ServeProcess, repository: Path
) -> None:
    document = mlp_document(name="late", layers=_layers(8))
    _write(repository, "late", yaml.safe_dump(document).replace("units: 8", "units: -8"))
    state, reason, _ = wait_until(
        lambda: (
            "build failed" in _index(watched.url).get("late", ("", "", []))[1]
            and _index(watched.url)["late"]
        ),
        "the watcher tried the new spec",
        seconds=WAIT,
    )
    assert state == "UNAVAILABLE" and "units" in reason
    fixed = _write(repository, "late", document)
    wait_until(lambda: _answers(watched.url, "late", fixed), "the fixed model serves", seconds=WAIT)
    assert _index(watched.url)["late"][:2] == ("READY", "")


def test_a_refused_variant_is_not_served_from_an_older_spec(
    repository: Path, run_cli: Callable[..., Any]
) -> None:
    document = mlp_document(layers=_layers(16), variants=["fp32", "int8-dynamic"])
    spec = _write(repository, "tiny", document)
    assert run_cli("build", spec, "-r", repository).code == 0
    # A changed layer and a budget no int8 file can meet.
    document.update(layers=_layers(12, "tanh"), budget={"int8-dynamic": {"max_abs": 0.0}})
    spec = _write(repository, "tiny", document)
    built = run_cli("build", spec, "-r", repository)
    assert built.code == 1 and "REFUSED" in built.out
    assert "version(s) 1 in" in built.err and "are of an older spec and are not served" in built.err
    assert (repository / "tiny-int8-dynamic" / "1" / "model.onnx").is_file()  # still on disk
    checked = run_cli("verify", spec, "-r", repository)
    assert checked.code == 1 and "relax its `budget:`" in " ".join(checked.out.split())

    server = ServeProcess(repository, pattern=PATTERN)
    try:
        index = _index(server.url)
        assert index["tiny"][0] == "READY" and _answers(server.url, "tiny", spec)
        state, reason, _ = index["tiny-int8-dynamic"]
        assert state == "UNAVAILABLE" and "refused" in reason and "max_abs" in reason
        with InferenceClient(server.url) as client, pytest.raises(Unavailable) as error:
            client.infer("tiny-int8-dynamic", {"x": X})
        assert error.value.code == "UNAVAILABLE"
        assert "refused" in error.value.message
    finally:
        server.close()


def test_under_watch_a_variant_follows_its_spec_or_stops_serving(
    repository: Path,
) -> None:
    document = mlp_document(layers=_layers(16), variants=["fp32", "fp16"])
    spec = _write(repository, "tiny", document)
    server = ServeProcess(repository, "--watch", "--watch-interval", "0.1", pattern=PATTERN)
    try:
        assert _index(server.url)["tiny-fp16"][0] == "READY"
        # A new network: fp32 and fp16 both move to it (fp16 within its budget).
        document.update(layers=_layers(10, "tanh"))
        spec = _write(repository, "tiny", document)
        wait_until(
            lambda: _answers(server.url, "tiny", spec), "fp32 follows the spec", seconds=WAIT
        )

        def fp16_follows() -> bool:
            want = reference.forward(load_spec(spec), X)
            try:
                with InferenceClient(server.url) as client:
                    got = client.infer("tiny-fp16", {"x": X})["y"]
            except InferenceServerError:
                return False
            return bool(np.allclose(got, want, atol=2e-3))

        wait_until(fp16_follows, "fp16 follows the spec", seconds=WAIT)
        # A budget fp16 cannot meet: it stops serving instead of answering for an old spec.
        document.update(layers=_layers(14, "tanh"), budget={"fp16": {"max_abs": 0.0}})
        spec = _write(repository, "tiny", document)
        wait_until(
            lambda: _index(server.url)["tiny-fp16"][0] == "UNAVAILABLE",
            "fp16 stops serving",
            seconds=WAIT,
        )
        assert "refused" in _index(server.url)["tiny-fp16"][1]
        wait_until(
            lambda: _answers(server.url, "tiny", spec), "fp32 still follows the spec", seconds=WAIT
        )
    finally:
        server.close()


def _load(url: str, name: str, **parameters: str) -> None:
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.RepositoryModelLoadRequest(model_name=name)
        for key, value in parameters.items():
            request.parameters[key].string_param = value
        stub.RepositoryModelLoad(request, timeout=120)


def test_a_model_added_as_a_spec_only_is_built_by_its_load(
    repository: Path, tmp_path: Path
) -> None:
    _write(repository, "first", mlp_document(name="first"))
    server = ServeProcess(repository, pattern=PATTERN)
    try:
        spec = _write(repository, "tiny", mlp_document(variants=["fp32", "fp16"]))
        _load(server.url, "tiny")
        assert _answers(server.url, "tiny", spec)
        assert (repository / "tiny-fp16" / "1" / "model.onnx").is_file()  # built with it
        assert _index(server.url)["tiny"][:2] == ("READY", "")
    finally:
        server.close()


def test_a_load_applies_its_config_or_refuses_it_by_field(repository: Path) -> None:
    # Wide enough that a run takes a while and requests queue behind it.
    layers = [{"type": "dense", "units": 2048, "activation": "relu"}] * 2 + _layers(2)[1:]
    spec = _write(repository, "tiny", mlp_document(layers=layers, serving={"max_batch_size": 64}))
    server = ServeProcess(repository, pattern=PATTERN)
    try:
        config = {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 200000}}
        _load(server.url, "tiny", config=json.dumps(config))
        rows = [X[i : i + 1] for i in range(6)] * 4

        async def concurrently() -> list[np.ndarray]:
            async with AsyncInferenceClient(server.url) as client:
                calls = [client.infer("tiny", {"x": x}) for x in rows]
                return [answer["y"] for answer in await asyncio.gather(*calls)]

        answers = asyncio.run(concurrently())
        with grpc.insecure_channel(server.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="tiny")).model_stats
        want = reference.forward(load_spec(spec), np.concatenate(rows))
        np.testing.assert_allclose(np.concatenate(answers), want, atol=1e-5, rtol=1e-4)
        counts = {batch.batch_size: batch.compute_infer.count for batch in stats[0].batch_stats}
        assert sum(size * count for size, count in counts.items()) == len(rows)
        assert max(counts) <= 4  # never above the loaded setting (the spec says 64)

        # The policy of a load decides what serves: a second version built by this load
        # serves beside the first with `all`, where config.pbtxt's latest 1 would drop it.
        old_spec = load_spec(spec)
        spec = _write(
            repository,
            "tiny",
            mlp_document(layers=layers, seed=9, serving={"max_batch_size": 64}),
        )
        _load(server.url, "tiny", config=json.dumps({"version_policy": {"all": {}}}))
        with InferenceClient(server.url) as client:
            assert list(client.metadata("tiny").versions) == ["1", "2"]
            got_old = client.infer("tiny", {"x": X}, version="1")["y"]
        np.testing.assert_allclose(got_old, reference.forward(old_spec, X), atol=1e-5, rtol=1e-4)
        assert _answers(server.url, "tiny", spec)  # unpinned: the newest, of the current spec

        for parameters, field in [
            ({"config": json.dumps({"input": []})}, "'input'"),
            ({"config": json.dumps({"max_batch_size": -1})}, "'max_batch_size'"),
            ({"config": json.dumps({"dynamic_batching": {"priority_levels": 2}})}, "priority"),
            ({"config": "{not json"}, "not JSON"),
            ({"file:1/model.onnx": "abc"}, "'file:1/model.onnx'"),
        ]:
            with pytest.raises(grpc.RpcError) as error:
                _load(server.url, "tiny", **parameters)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (error.value.details() or "")
        assert _answers(server.url, "tiny", spec)  # still serving
    finally:
        server.close()


def test_with_workers_a_spec_only_load_reaches_every_worker(repository: Path) -> None:
    _write(repository, "first", mlp_document(name="first"))
    server = ServeProcess(repository, "--workers", "2", pattern=PATTERN)
    try:
        spec = _write(repository, "tiny", mlp_document())
        _load(server.url, "tiny", config=json.dumps({"max_batch_size": 8}))
        with InferenceClient(server.url) as client:
            assert client.ready("tiny")  # asked of every worker
        # New connections land on either worker; each answers from the built file.
        assert all(_answers(server.url, "tiny", spec) for _ in range(12))
    finally:
        server.close()
