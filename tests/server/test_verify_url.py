"""``onnxforge verify --url``: a real server process, its answers held to the NumPy reference.

One server serves a repository made for these tests:
- ``digits-mlp`` (and its three variants) built from the bundled spec; ``digits-mlp`` has
  the current build as version 2 and a build of an older spec (another normalisation) as 1;
- ``tampered-mlp``: the same network under another name, whose file's last weights were
  scaled after the build, its recorded spec hash left as it was; its spec also lists fp16,
  which is not there;
- ``orphan``: a model file without a spec.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml

from onnxforge.builder import accuracy, load_spec, reference
from onnxforge.builder.repository import artifacts
from onnxforge.builder.samples import sample_inputs
from onnxforge.builder.spec import Spec
from onnxforge.cli.verify_url import with_port
from onnxforge.client import AsyncInferenceClient, InferenceClient
from tests.conftest import MODELS, REPO_ROOT
from tests.server.processes import ServeProcess

DIGITS = ["digits-mlp", "digits-mlp-fp16", "digits-mlp-int8-dynamic", "digits-mlp-int8-static"]
SAMPLES = 100
SEED = 3
WAIT = 60  # seconds: a bound on every call made here, far from what any of them takes


def _spec_folder(root: Path, name: str, shift: float = 0.0, **changes: Any) -> Path:
    """The bundled digits-mlp spec and weights in ``root/name``, with ``changes`` applied
    and ``shift`` added to the normalisation's means."""
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(MODELS / "digits-mlp" / "weights.npz", folder)
    document = yaml.safe_load((MODELS / "digits-mlp" / "spec.yaml").read_text())
    document.update(name=name, **changes)
    normalize = document["layers"][0]
    normalize["mean"] = [mean + shift for mean in normalize["mean"]]
    (folder / "spec.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return folder / "spec.yaml"


def _place(root: Path, name: str, version: int, model: bytes, config: str | None) -> Path:
    path = root / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(model)
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)
    return path


def _serve_every_version(config: str) -> str:
    lines = [line for line in config.splitlines() if not line.startswith("version_policy")]
    return "\n".join([*lines, "version_policy: { all: { } }"]) + "\n"


def _scale_last_weights(path: Path, factor: float) -> None:
    """Scale the last MatMul's weights in place; the metadata (spec hash) stays as it was."""
    model = onnx.load(str(path))
    weight = [node for node in model.graph.node if node.op_type == "MatMul"][-1].input[1]
    for tensor in model.graph.initializer:
        if tensor.name == weight:
            scaled = onnx.numpy_helper.to_array(tensor) * np.float32(factor)
            tensor.CopyFrom(onnx.numpy_helper.from_array(scaled, weight))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    current = load_spec(_spec_folder(root, "digits-mlp"))
    for artifact in artifacts(current)[0]:
        version = 2 if artifact.variant == "fp32" else 1
        config = _serve_every_version(artifact.config)
        _place(root, artifact.name, version, artifact.model, config)
    old = load_spec(_spec_folder(tmp_path_factory.mktemp("old"), "digits-mlp", shift=0.5))
    [old_fp32] = artifacts(old, ["fp32"])[0]
    _place(root, "digits-mlp", 1, old_fp32.model, None)
    (root / "digits-mlp" / "1" / "older.sha256").write_text(old.sha256)  # for the tests
    tampered = load_spec(_spec_folder(root, "tampered-mlp", variants=["fp32", "fp16"]))
    [tampered_fp32] = artifacts(tampered, ["fp32"])[0]
    path = _place(root, "tampered-mlp", 1, tampered_fp32.model, tampered_fp32.config)
    _scale_last_weights(path, 1.05)
    [orphan] = artifacts(current, ["fp32"])[0]
    _place(root, "orphan", 1, orphan.model, None)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(repository, "--no-build")
    yield process
    process.close()


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.npy"
    np.save(path, np.random.default_rng(11).uniform(size=(7, 64)).astype(np.float32))
    return path


def _verify(run_cli: Callable[..., Any], server: ServeProcess, *args: str | Path) -> Any:
    return run_cli("verify", "--url", server.url, "--samples", SAMPLES, "--seed", SEED, *args)


def _checked_rows(spec: Spec, rows: Path) -> np.ndarray:
    return np.concatenate([sample_inputs(spec, SAMPLES, SEED), np.load(rows)])


def _served(server: ServeProcess, model: str, rows: np.ndarray) -> tuple[list[str], Any]:
    """The versions the server lists for ``model`` and its newest version's answers."""
    with InferenceClient(server.url) as client:
        versions = list(client.metadata(model).versions)
        answers = client.infer(model, {"x": rows}, version=versions[-1], timeout=WAIT)
    return versions, answers


def test_healthy_models_match_the_reference_and_their_budgets(
    repository: Path, server: ServeProcess, run_cli: Callable[..., Any], rows: Path
) -> None:
    result = _verify(run_cli, server, "-r", repository, "--input", rows, "--json", *DIGITS)
    assert result.code == 0, result.out + result.err
    reports = {entry["model"]: entry for entry in json.loads(result.out)}
    assert list(reports) == DIGITS
    spec = load_spec(repository / "digits-mlp" / "spec.yaml")
    x = _checked_rows(spec, rows)
    want = reference.run(spec, x)
    for model, entry in reports.items():
        versions, got = _served(server, model, x)
        assert entry["ok"] and entry["checked"] and entry["failures"] == []
        assert entry["samples"] == len(x) == SAMPLES + 7
        assert entry["spec_sha256"] == {"served": spec.sha256, "current": spec.sha256}
        assert entry["versions"] == versions and entry["version"] == versions[-1]
        assert entry["variant"] == ("fp32" if model == "digits-mlp" else model[11:])
        if model == "digits-mlp":
            for check in entry["outputs"]:
                name = check["output"]
                error = float(np.max(np.abs(got[name].astype(np.float64) - want[name])))
                assert check["ok"] and 0 <= check["max_abs"] <= 1e-5
                assert check["max_abs"] == pytest.approx(error, abs=1e-6)
            continue
        figures = entry["accuracy"]["outputs"]["probabilities"]
        measured = accuracy.figures(got["probabilities"], want["probabilities"], True)
        assert 0 < figures["max_abs"] < 1 and figures["cosine"] >= 0.99
        assert figures["argmax_agreement"] == pytest.approx(measured.argmax_agreement, abs=0.02)
        assert figures["mean_abs"] == pytest.approx(measured.mean_abs, rel=0.1)
        if model.endswith("int8-static"):  # static scales: each row's answer is its own
            assert figures["max_abs"] == pytest.approx(measured.max_abs, rel=1e-5)
    assert reports["digits-mlp"]["version"] == "2"


def test_only_the_newest_version_is_checked_older_ones_are_listed(
    repository: Path, server: ServeProcess, run_cli: Callable[..., Any]
) -> None:
    result = _verify(run_cli, server, "-r", repository, "--json", "digits-mlp")
    assert result.code == 0, result.out + result.err
    [entry] = json.loads(result.out)
    spec = load_spec(repository / "digits-mlp" / "spec.yaml")
    x = sample_inputs(spec, SAMPLES, SEED)
    versions, _ = _served(server, "digits-mlp", x)
    older = (repository / "digits-mlp" / "1" / "older.sha256").read_text()
    assert entry["version"] == "2" and versions[-1] == "2"
    assert entry["older_versions"] == [
        {"version": v, "spec_sha256": older, "note": "older spec, kept by version_policy"}
        for v in versions[:-1]
    ]
    if "1" in versions:  # version 1 computes something else: answers from it would fail
        with InferenceClient(server.url) as client:
            got = client.infer("digits-mlp", {"x": x}, version="1", timeout=WAIT)
        assert np.max(np.abs(got["hidden"] - reference.run(spec, x)["hidden"])) > 1e-3


def test_a_tampered_file_fails_naming_the_output(
    repository: Path, server: ServeProcess, run_cli: Callable[..., Any], rows: Path
) -> None:
    result = _verify(run_cli, server, "-r", repository, "--input", rows, "--json", "tampered-mlp")
    assert result.code == 1, result.out + result.err
    [entry] = json.loads(result.out)
    spec = load_spec(repository / "tampered-mlp" / "spec.yaml")
    assert entry["spec_sha256"] == {"served": spec.sha256, "current": spec.sha256}
    x = _checked_rows(spec, rows)
    _, got = _served(server, "tampered-mlp", x)
    want = reference.run(spec, x)
    checks = {check["output"]: check for check in entry["outputs"]}
    assert checks["hidden"]["ok"]  # the tampered weights come after the hidden layer
    probabilities = checks["probabilities"]
    error = float(np.max(np.abs(got["probabilities"].astype(np.float64) - want["probabilities"])))
    assert not probabilities["ok"] and probabilities["max_abs"] == pytest.approx(error, rel=1e-6)
    assert error > 1e-3
    assert entry["failures"] == [
        f"output 'probabilities' over tolerance: max abs err {error:.3g}, "
        f"max rel err {probabilities['max_rel']:.3g}"
    ]
    assert f"tampered-mlp: output 'probabilities' over tolerance: max abs err {error:.3g}" in (
        result.err
    )
    table = _verify(run_cli, server, "-r", repository, "tampered-mlp")
    assert table.code == 1 and "OVER TOLERANCE" in table.out


def test_a_spec_changed_after_the_server_started_fails_naming_the_hash(
    repository: Path, server: ServeProcess, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    served = load_spec(repository / "digits-mlp" / "spec.yaml")
    opset = 18 if served.opset != 18 else 19  # another opset: same function, another spec
    changed = load_spec(_spec_folder(tmp_path, "digits-mlp", opset=opset))
    assert changed.sha256 != served.sha256
    result = _verify(run_cli, server, "-r", tmp_path, "--json", "digits-mlp")
    assert result.code == 1, result.out + result.err
    [entry] = json.loads(result.out)
    assert entry["spec_sha256"] == {"served": served.sha256, "current": changed.sha256}
    assert all(check["ok"] for check in entry["outputs"])  # the answers still match
    assert entry["failures"] == [
        f"spec hash {served.sha256[:12]} of version 2 is not the current spec's "
        f"{changed.sha256[:12]} ({tmp_path / 'digits-mlp' / 'spec.yaml'}): rebuild and reload"
    ]
    assert f"spec hash {served.sha256[:12]}" in result.err


def test_every_served_model_and_what_its_spec_lists(
    repository: Path, server: ServeProcess, run_cli: Callable[..., Any]
) -> None:
    result = _verify(run_cli, server, "-r", repository, "--json")
    assert result.code == 1, result.out + result.err
    entries = {entry["model"]: entry for entry in json.loads(result.out)}
    with InferenceClient(server.url) as client:
        index = {model.name: model for model in client.repository_index(timeout=WAIT)}
    ready = {name for name, model in index.items() if model.state == "READY"}
    assert ready == {*DIGITS, "tampered-mlp", "orphan"}
    assert set(entries) == ready | {"tampered-mlp-fp16"}
    assert all(entries[model]["ok"] and entries[model]["checked"] for model in DIGITS)
    assert not entries["tampered-mlp"]["ok"]
    missing = index.get("tampered-mlp-fp16")  # listed (not ready) or not at all
    reason = "" if missing is None or not missing.reason else f" ({missing.reason})"
    state = "not served" if missing is None else f"not ready: {missing.state}{reason}"
    assert entries["tampered-mlp-fp16"]["failures"] == [state]
    orphan = entries["orphan"]
    assert orphan["ok"] and not orphan["checked"] and orphan["failures"] == []
    assert orphan["notes"] == [f"no spec in {repository}: not checked"]
    named = _verify(run_cli, server, "-r", repository, "orphan")
    assert named.code == 1
    assert f"onnxforge: orphan: no spec in {repository}: not checked" in named.err


def test_an_unreachable_server_is_one_line_and_exit_2() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "onnxforge", "verify", "--url", f"127.0.0.1:{port}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"onnxforge: error: cannot reach the server at 127.0.0.1:{port}")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_url_without_port_means_8001() -> None:
    assert with_port("localhost") == "localhost:8001"
    assert with_port("[::1]") == "[::1]:8001"
    assert with_port("10.0.0.2:9001") == "10.0.0.2:9001"
    assert with_port("[::1]:9001") == "[::1]:9001"


def test_the_server_sends_each_versions_spec_hash(repository: Path, server: ServeProcess) -> None:
    spec = load_spec(repository / "digits-mlp" / "spec.yaml")
    older = (repository / "digits-mlp" / "1" / "older.sha256").read_text()
    with InferenceClient(server.url) as client:
        listing, headers = client.metadata_with_headers("digits-mlp", timeout=WAIT)
        hashes = {
            version: client.metadata_with_headers("digits-mlp", version, WAIT)[1]
            for version in listing.versions
        }
    assert headers["x-onnxforge-spec-sha256"] == spec.sha256  # the newest version's
    assert headers["x-onnxforge-variant"] == "fp32"
    assert {v: h["x-onnxforge-spec-sha256"] for v, h in hashes.items()} == {
        v: spec.sha256 if v == "2" else older for v in listing.versions
    }

    async def variant_headers() -> dict[str, str]:
        async with AsyncInferenceClient(server.url) as client:
            _, found = await client.metadata_with_headers("digits-mlp-int8-static", timeout=WAIT)
            index = await client.repository_index(ready=True, timeout=WAIT)
        assert {model.name for model in index} >= set(DIGITS)
        return found

    found = asyncio.run(variant_headers())
    assert found["x-onnxforge-spec-sha256"] == spec.sha256
    assert found["x-onnxforge-variant"] == "int8-static"
