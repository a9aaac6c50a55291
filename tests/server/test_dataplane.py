"""The data plane driven directly, without a transport: answers, errors, control, drain."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from onnxforge.builder import load_spec, reference
from onnxforge.server import peers
from onnxforge.server.dataplane import DataPlane, InferRequest, RequestedOutput
from onnxforge.server.errors import (
    Code,
    InvalidInput,
    InvalidRequest,
    LoadFailed,
    ModelNotFound,
    ServingError,
    TooManyRows,
    Unavailable,
)
from onnxforge.server.registry import Registry
from onnxforge.server.stats import ModelStats, Statistics, VersionStats, merge
from tests.helpers import mlp_document, wait_until_async

X = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A repository holding one spec (``tiny``, fp32), built once for the module."""
    root = tmp_path_factory.mktemp("dataplane")
    (root / "tiny").mkdir()
    (root / "tiny" / "spec.yaml").write_text(yaml.safe_dump(mlp_document()))
    yield root


def serve(
    root: Path, scenario: Callable[[DataPlane], Awaitable[Any]], *, max_rows: int = 65536
) -> Any:
    """Run ``scenario`` against a data plane of ``root`` on an event loop of its own."""

    async def main() -> Any:
        statistics = Statistics()
        registry = Registry(root, threads=1, on_batch=statistics.batch)
        await registry.load_all()
        plane = DataPlane(registry, statistics, max_rows=max_rows)
        try:
            return await scenario(plane)
        finally:
            await registry.close()

    return asyncio.run(main())


def test_infer_answers_what_the_reference_computes(repository: Path) -> None:
    spec = load_spec(repository / "tiny" / "spec.yaml")

    async def scenario(plane: DataPlane) -> None:
        got = await plane.infer("tiny", {"x": X})
        assert list(got) == ["y"]
        np.testing.assert_allclose(got["y"], reference.forward(spec, X), atol=1e-6)
        async with plane.inference("tiny", "1") as call:
            outputs = await call.run(InferRequest({"x": X[:2]}, datatypes={"x": "FP32"}))
            assert (call.model, call.version, call.rows) == ("tiny", "1", 2)
        np.testing.assert_allclose(outputs["y"], reference.forward(spec, X[:2]), atol=1e-6)

    serve(repository, scenario)


def test_metadata_and_its_headers_are_plain_data(repository: Path) -> None:
    async def scenario(plane: DataPlane) -> None:
        meta = await plane.model_metadata("tiny")
        assert (meta.name, meta.versions, meta.platform) == ("tiny", ("1",), "onnxruntime_onnx")
        assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("x", "FP32", (-1, 4))]
        assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [("y", "FP32", (-1, 2))]
        headers = dict(meta.headers())
        assert headers["x-onnxforge-variant"] == "fp32" == meta.variant
        assert meta.spec_sha256 is not None and len(meta.spec_sha256) == 64
        assert headers["x-onnxforge-spec-sha256"] == meta.spec_sha256
        if meta.accuracy is not None:
            assert json.loads(headers["x-onnxforge-accuracy"]) == meta.accuracy
        server = await plane.server_metadata()
        assert server.name == "onnxforge" and "model_repository" in server.extensions

    serve(repository, scenario)


def test_bad_requests_raise_errors_with_their_codes(repository: Path) -> None:
    async def scenario(plane: DataPlane) -> dict[str, ServingError]:
        attempts: dict[str, Callable[[], Awaitable[Any]]] = {
            "unknown model": lambda: plane.infer("nope", {"x": X}),
            "unknown version": lambda: plane.infer("tiny", {"x": X}, version="9"),
            "wrong shape": lambda: plane.infer("tiny", {"x": X[:, :3]}),
            "wrong dtype": lambda: plane.infer("tiny", {"x": X.astype(np.float64)}),
            "too many rows": lambda: plane.infer("tiny", {"x": np.zeros((9, 4), np.float32)}),
            "unknown output": lambda: plane.infer("tiny", {"x": X}, outputs=["z"]),
            "unsupported parameter": lambda: _run(
                plane, InferRequest({"x": X}, outputs=[RequestedOutput("y", {"classification": 2})])
            ),
        }
        errors = {}
        for what, attempt in attempts.items():
            with pytest.raises(ServingError) as raised:
                await attempt()
            errors[what] = raised.value
        return errors

    errors = serve(repository, scenario, max_rows=8)
    assert isinstance(errors["unknown model"], ModelNotFound)
    assert errors["unknown model"].message == "model 'nope' not found (available models: tiny)"
    assert errors["unknown version"].code == Code.NOT_FOUND
    assert isinstance(errors["wrong shape"], InvalidInput)
    assert "shape [5, 3] does not match the model's [N, 4]" in errors["wrong shape"].message
    assert "datatype FP64 does not match the model's FP32" in errors["wrong dtype"].message
    assert isinstance(errors["too many rows"], TooManyRows)
    assert errors["too many rows"].code == Code.RESOURCE_EXHAUSTED
    assert errors["too many rows"].message == (
        "a request may hold at most 8 rows, this one holds 9 (--max-rows)"
    )
    assert isinstance(errors["unknown output"], InvalidRequest)
    assert "output 'y' parameter 'classification'" in errors["unsupported parameter"].message


async def _run(plane: DataPlane, request: InferRequest) -> dict[str, np.ndarray]:
    async with plane.inference("tiny") as call:
        return await call.run(request)


def test_statistics_count_answers_failures_and_rows(repository: Path) -> None:
    async def scenario(plane: DataPlane) -> tuple[list[VersionStats], list[VersionStats]]:
        before = await plane.statistics("tiny")
        for rows in (1, 2, 3):
            await plane.infer("tiny", {"x": X[:rows]})
        with pytest.raises(InvalidInput):
            await plane.infer("tiny", {"x": X[:, :3]})
        return before, await plane.statistics("tiny")

    before, after = serve(repository, scenario)
    assert [(s.name, s.version, s.stats.success.count) for s in before] == [("tiny", "1", 0)]
    [stats] = [part.stats for part in after]
    assert (stats.success.count, stats.fail.count) == (3, 1)
    assert stats.inference_count == 6  # rows answered
    assert stats.execution_count == 3 and sum(d.count for d in stats.batches.values()) == 3
    assert stats.success.ns > 0 and stats.last_inference_ms > 0


def test_unload_and_load_change_readiness_index_and_listeners(repository: Path) -> None:
    async def scenario(plane: DataPlane) -> list[tuple[bool, dict[str, bool]]]:
        seen: list[tuple[bool, dict[str, bool]]] = []  # what a listener saw when told

        async def listener() -> None:
            seen.append((plane.ready_now(), plane.serving()))

        plane.listeners.append(listener)
        assert await plane.server_ready() and await plane.model_ready("tiny")
        await plane.unload("tiny")
        assert not await plane.model_ready("tiny")
        assert await plane.server_ready()  # unloaded on purpose: the server stays ready
        index = await plane.index()
        assert [(e.name, e.version, e.state, e.reason) for e in index] == [
            ("tiny", "", "UNAVAILABLE", "unloaded")
        ]
        assert await plane.index(ready_only=True) == []
        assert await plane.statistics() == []  # nothing loaded, nothing counted
        with pytest.raises(InvalidRequest, match="load parameter 'colour' is not supported"):
            await plane.load("tiny", {"colour": "blue"})
        with pytest.raises(ModelNotFound):
            await plane.load("nope", {"colour": "blue"})  # NOT_FOUND before the parameters
        config = json.dumps({"max_batch_size": 4, "dynamic_batching": {}})
        await plane.load("tiny", {"config": config})
        assert await plane.model_ready("tiny", "1")
        assert plane.registry.get("tiny").serving.max_batch_size == 4
        return seen

    seen = serve(repository, scenario)
    assert seen == [(True, {"tiny": False}), (True, {"tiny": True})]


def test_a_load_that_fails_raises_load_failed(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")

    async def scenario(plane: DataPlane) -> LoadFailed:
        assert not await plane.server_ready()  # a model failed, not on purpose
        with pytest.raises(LoadFailed) as failed:
            await plane.load("broken")
        return failed.value

    error = serve(tmp_path, scenario)
    assert error.code == Code.INVALID_ARGUMENT
    assert error.message.startswith("model 'broken' failed to load: load failed: ")


def test_a_draining_plane_refuses_inference_and_counts_it(repository: Path) -> None:
    async def scenario(plane: DataPlane) -> None:
        await plane.infer("tiny", {"x": X})
        plane.drain.begin()
        with pytest.raises(Unavailable, match="server unavailable: the server is shutting down"):
            await plane.infer("tiny", {"x": X})
        assert plane.drain.tally().refused == 1 and plane.drain.in_flight == 0
        assert not await plane.server_ready() and not await plane.model_ready("tiny")
        assert plane.serving() == {"tiny": False}

    serve(repository, scenario)


def test_peered_plane_passes_control_on_unless_the_call_was_passed_on(repository: Path) -> None:
    class FakePeers:
        def __init__(self) -> None:
            self.calls: list[tuple[str, ...]] = []

        async def unload(self, name: str) -> None:
            self.calls.append(("unload", name))

        async def load(self, name: str, parameters: Any) -> None:
            self.calls.append(("load", name, *parameters))

        async def model_ready(self, name: str, version: str) -> bool:
            self.calls.append(("model_ready", name))
            return False

        async def statistics(self, name: str, version: str) -> list[VersionStats]:
            stats = ModelStats(inference_count=10)
            stats.success.add(100, 5)
            return [VersionStats("tiny", "1", stats)]

    fake = FakePeers()

    async def scenario(plane: DataPlane) -> None:
        peered = peers.PeeredDataPlane(plane, fake)  # type: ignore[arg-type]
        await plane.infer("tiny", {"x": X[:2]})
        [merged] = await peered.statistics("tiny")
        assert (merged.stats.success.count, merged.stats.inference_count) == (6, 12)
        assert not await peered.model_ready("tiny")  # not ready in every worker
        await peered.unload("tiny")
        await peered.load("tiny", {"config": "{}"})
        mark = peers._FORWARDED.set(True)  # what PeerMark sets for another worker's call
        try:
            await peered.unload("tiny")
            assert await peered.model_ready("tiny") is False  # unloaded here, not asked on
            await peered.load("tiny")
        finally:
            peers._FORWARDED.reset(mark)

    serve(repository, scenario)
    assert fake.calls == [
        ("model_ready", "tiny"),
        ("unload", "tiny"),
        ("load", "tiny", "config"),
    ]


def test_a_call_passed_on_before_the_workers_know_each_other_waits(repository: Path) -> None:
    async def scenario(plane: DataPlane) -> None:
        waiting = peers.Peers("token")  # a worker serves before the others are named
        unload = asyncio.create_task(peers.PeeredDataPlane(plane, waiting).unload("tiny"))
        await wait_until_async(lambda: not plane.serving()["tiny"], "the local unload")
        await asyncio.sleep(0.05)
        assert not unload.done()  # held until the other workers are known
        waiting.connect([])
        await asyncio.wait_for(unload, 10)
        await waiting.close()

    serve(repository, scenario)


def test_a_peer_mark_counts_only_with_the_internal_token() -> None:
    mark = (peers.PEER_HEADER, "1")
    assert peers.forwarded([mark, ("authorization", "Bearer secret")], "secret")
    assert not peers.forwarded([mark], "secret")
    assert not peers.forwarded([mark, ("authorization", "Bearer guess")], "secret")
    assert not peers.forwarded([("authorization", "Bearer secret")], "secret")


def test_merged_statistics_add_up_per_version() -> None:
    def part(name: str, count: int, batch: int, last: int) -> VersionStats:
        stats = ModelStats(inference_count=count, execution_count=1, last_inference_ms=last)
        stats.success.add(10 * count, count)
        stats.batches[batch].add(7)
        return VersionStats(name, "1", stats)

    merged = merge([part("b", 2, 4, 5), part("a", 1, 4, 9), part("b", 3, 8, 3)])
    assert [(m.name, m.stats.inference_count, m.stats.success.ns) for m in merged] == [
        ("a", 1, 10),
        ("b", 5, 50),
    ]
    b = merged[1].stats
    assert b.last_inference_ms == 5 and b.execution_count == 2
    assert {size: (d.count, d.ns) for size, d in b.batches.items()} == {4: (1, 7), 8: (1, 7)}


def test_the_data_plane_imports_no_grpc() -> None:
    """Everything below the transports loads without gRPC (and an HTTP server needs none)."""
    modules = [
        "onnxforge.server.dataplane",
        "onnxforge.server.drain",
        "onnxforge.server.errors",
        "onnxforge.server.registry",
        "onnxforge.server.stats",
        "onnxforge.server.watch",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0].startswith('grpc')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stdout
