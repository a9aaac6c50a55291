"""Every script in ``examples/`` runs as a user would run it and prints real values.

Each example is a subprocess (``sys.executable``, or ``bash`` for the grpcurl session) with a
temporary working folder, against a real ``onnxforge serve`` process on a copy of
``models/digits-mlp``. What it prints is parsed and held to ``builder.reference``; the export
examples assert their own agreement with scikit-learn / PyTorch and print the error, which
is checked here too. ``PYTHONWARNINGS=error`` and an empty stderr keep the examples quiet.

tritonclient, torch and grpcurl are optional: their tests skip when they are missing.
tritonclient never enters this process (its protobuf names collide with
onnxforge.protocol.generated).
The grpcurl session's calls are also replayed by a client built from reflection alone, so
what the session relies on is checked even where grpcurl is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from onnxforge.builder import load_spec, reference
from onnxforge.builder.spec import Spec
from tests.conftest import MODELS, REPO_ROOT
from tests.server.processes import ServeProcess

EXAMPLES = REPO_ROOT / "examples"
SPEC = load_spec(MODELS / "digits-mlp" / "spec.yaml")
SERVICE = "inference.GRPCInferenceService"
ROWS = 96  # rows the client examples send; the model gets rows 67 and 89 wrong
WAIT = 60.0  # bound on a hung call; nothing depends on timing
ROW_LINE = re.compile(r"row +(\d+): predicted (\d+) +(?:true (\d+) +)?\(p=([\d.]+)\)")


def heldout(rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS / "digits-mlp" / "heldout.npz") as data:
        return data["x"][:rows], data["y"][:rows]


def run(command: list[str], cwd: Path, timeout: float = 180) -> str:
    """Run an example as a user would; it must succeed and say nothing on stderr."""
    done = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{command}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stderr == "", done.stderr
    return done.stdout


def example(name: str, *args: str | Path, cwd: Path) -> str:
    return run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd)


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"no {pattern!r} in:\n{text}"
    return float(found.group(1))


def check_classification(out: str, x: np.ndarray, y: np.ndarray | None) -> None:
    """The printed rows, labels, probabilities and accuracy are the reference's."""
    want = reference.forward(SPEC, x)
    rows = [match.groups() for match in ROW_LINE.finditer(out)]
    assert [int(row[0]) for row in rows] == list(range(len(x))), out
    predicted = np.array([int(row[1]) for row in rows])
    np.testing.assert_array_equal(predicted, want.argmax(axis=1))
    np.testing.assert_allclose([float(row[3]) for row in rows], want.max(axis=1), atol=2e-6)
    if y is None:
        return
    truth = np.array([int(row[2]) for row in rows])
    np.testing.assert_array_equal(truth, y)
    correct = int((want.argmax(axis=1) == y).sum())
    assert 0.85 * len(y) < correct  # the model is what its spec says it is (96.85%)
    assert out.count("<- wrong") == len(y) - correct
    assert f"accuracy: {correct}/{len(y)} = {correct / len(y):.4f}" in out.splitlines()


# ------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of models/digits-mlp holding only the spec and weights: the server builds."""
    folder = tmp_path_factory.mktemp("examples-repo")
    (folder / "digits-mlp").mkdir()
    for file in ("spec.yaml", "weights.npz"):
        shutil.copy(MODELS / "digits-mlp" / file, folder / "digits-mlp" / file)
    return folder


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServeProcess]:
    serving = ServeProcess(repository)
    yield serving
    if serving.process.poll() is None:
        serving.stop()
    serving.close()


# ----------------------------------------------------------------------- the two clients


def test_python_client(server: ServeProcess, tmp_path: Path) -> None:
    out = example("python_client.py", "--url", server.url, "--rows", ROWS, cwd=tmp_path)
    lines = out.splitlines()
    assert "server live: True, model digits-mlp ready: True" in lines
    assert "input  x: FP32 [-1, 64]" in lines
    assert "output probabilities: FP32 [-1, 10]" in lines
    assert "variant: fp32" in lines and "no-such-model: NOT_FOUND" in lines
    x, y = heldout()
    check_classification(out, x, y)
    correct = int((reference.forward(SPEC, x).argmax(axis=1) == y).sum())
    assert f"async: {ROWS // 4} concurrent requests" in lines
    assert f"async accuracy: {correct}/{ROWS} = {correct / ROWS:.4f}" in lines


@pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None,
    reason="tritonclient is not installed (pip install 'tritonclient>=2.73,<3')",
)
def test_tritonclient_client(server: ServeProcess, tmp_path: Path) -> None:
    out = example("tritonclient_client.py", "--url", server.url, "--rows", ROWS, cwd=tmp_path)
    lines = out.splitlines()
    assert "server live: True, model digits-mlp ready: True" in lines
    assert "input  x: FP32 [-1, 64]" in lines
    x, y = heldout()
    check_classification(out, x, y)
    correct = int((reference.forward(SPEC, x).argmax(axis=1) == y).sum())
    assert f"async accuracy: {correct}/{ROWS} = {correct / ROWS:.4f}" in lines


# ------------------------------------------------------------------------------- grpcurl

GRPCURL = EXAMPLES / "grpcurl_session.sh"


def session_request(model: str = "digits-mlp") -> str:
    """The ModelInfer request body the session sends (its heredoc, $MODEL filled in)."""
    found = re.search(r"REQUEST=\$\(cat <<EOF\n(.*?)\nEOF\n\)", GRPCURL.read_text(), re.S)
    assert found, "no REQUEST heredoc in grpcurl_session.sh"
    return found.group(1).replace("$MODEL", model)


def sections(out: str) -> dict[str, str]:
    """The session's output split at its '## title' lines."""
    parts = re.split(r"^## (.*)$", out, flags=re.M)
    return {
        title.split(" (")[0]: body.strip()
        for title, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def check_infer_answer(response: dict, request: dict) -> None:
    """A ModelInfer answer (JSON, proto field names) is the reference's for the request."""
    [tensor] = request["inputs"]
    x = np.asarray(tensor["contents"]["fp32_contents"], np.float32).reshape(tensor["shape"])
    [output] = response["outputs"]
    assert (output["name"], output["datatype"]) == ("probabilities", "FP32")
    assert [int(d) for d in output["shape"]] == [1, 10]
    got = np.asarray(output["contents"]["fp32_contents"], np.float32).reshape(1, 10)
    want = reference.forward(SPEC, x)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert want.argmax() == 7  # the session says it sends a 7


@pytest.mark.skipif(shutil.which("grpcurl") is None, reason="grpcurl is not on PATH")
def test_grpcurl_session(server: ServeProcess, tmp_path: Path) -> None:
    out = run(["bash", str(GRPCURL), server.url], tmp_path, timeout=120)
    got = sections(out)
    assert set(got["services"].split()) >= {SERVICE, "grpc.health.v1.Health"}
    assert "rpc ModelInfer ( .inference.ModelInferRequest )" in got[f"methods of {SERVICE}"]
    assert "repeated bytes raw_input_contents = 7;" in got["the request message of ModelInfer"]
    assert json.loads(got["ServerLive"]) == {"live": True}
    metadata = json.loads(got["ModelMetadata"])
    assert metadata["name"] == "digits-mlp"
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("x", "FP32", ["-1", "64"])
    ]
    request = json.loads(got["ModelInfer request"])
    assert request == json.loads(session_request())
    response = json.loads(got["ModelInfer response"])
    assert response["id"] == "grpcurl-1"
    check_infer_answer(response, request)


def test_reflection_serves_what_the_grpcurl_session_needs(server: ServeProcess) -> None:
    """The session's calls, made the way grpcurl makes them: message types from server
    reflection alone (no .proto, nothing of onnxforge.protocol.generated), JSON bodies parsed
    into them."""
    with grpc.insecure_channel(server.url) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE, "grpc.health.v1.Health"} <= set(database.get_services())  # list
        pool = descriptor_pool.DescriptorPool(database)
        methods = pool.FindServiceByName(SERVICE).methods_by_name  # describe
        contents = pool.FindMessageTypeByName("inference.InferTensorContents")
        assert contents.fields_by_name["fp32_contents"].number == 6

        def call(method: str, body: str) -> dict:
            descriptor = methods[method]
            request_class = message_factory.GetMessageClass(descriptor.input_type)
            response_class = message_factory.GetMessageClass(descriptor.output_type)
            stub = channel.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            response = stub(json_format.Parse(body, request_class()), timeout=WAIT)
            return json_format.MessageToDict(response, preserving_proto_field_name=True)

        assert call("ServerLive", "{}") == {"live": True}
        metadata = call("ModelMetadata", '{"name": "digits-mlp"}')
        assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
            ("x", "FP32", ["-1", "64"])
        ]
        body = session_request()
        response = call("ModelInfer", body)
    assert response["id"] == "grpcurl-1"
    check_infer_answer(response, json.loads(body))


# ------------------------------------------------------------------------------- exports


def test_export_sklearn(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out_dir = tmp_path / "out"
    out = example("export_sklearn.py", "--out", out_dir, cwd=tmp_path)
    assert number(r"max abs error vs predict_proba: (\S+) on 450 rows", out) < 1e-5
    spec = load_spec(out_dir / "spec.yaml")
    assert spec.weight_layout == "in_out"
    assert [layer.type for layer in spec.layers] == ["normalize", "dense", "dense"]
    check_export(spec, out_dir / "repository" / "sklearn-digits" / "1" / "model.onnx", out)


def test_export_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")  # for its bundled digits
    out_dir = tmp_path / "out"
    out = example("export_pytorch.py", "--out", out_dir, cwd=tmp_path)
    assert number(r"max abs error vs PyTorch: (\S+) on 450 rows", out) < 1e-5
    spec = load_spec(out_dir / "spec.yaml")
    assert spec.weight_layout == "out_in"
    with np.load(out_dir / "weights.npz") as weights:  # the state dict, as it is
        assert {key: weights[key].shape for key in weights} == {
            "0.weight": (32, 64),
            "0.bias": (32,),
            "2.weight": (10, 32),
            "2.bias": (10,),
        }
    check_export(spec, out_dir / "repository" / "torch-digits" / "1" / "model.onnx", out)


def check_export(spec: Spec, model: Path, out: str) -> None:
    """The built file computes the spec, and the printed accuracy is the spec's."""
    with np.load(model.parents[3] / "heldout.npz") as data:
        x, y = data["x"], data["y"]
    assert x.shape == (450, 64) and x.dtype == np.float32
    want = reference.forward(spec, x)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {"x": x})
    np.testing.assert_allclose(got, want, atol=1e-5)
    accuracy = float((want.argmax(axis=1) == y).mean())
    assert accuracy > 0.9  # trained, not random
    assert number(r"ONNX accuracy: ([\d.]+)", out) == pytest.approx(accuracy, abs=2 / len(y))
    assert f"model: {model}" in out.splitlines()


# ---------------------------------------------------------------------------------- edge


@pytest.fixture(scope="module")
def edge(repository: Path, server: ServeProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``onnxforge export-edge digits-mlp`` of the model the server built."""
    folder = tmp_path_factory.mktemp("edge") / "edge"
    command = [sys.executable, "-m", "onnxforge", "export-edge", "digits-mlp"]
    run([*command, "-r", str(repository), "--out", str(folder)], REPO_ROOT)
    return folder


def test_edge_inference(edge: Path, tmp_path: Path) -> None:
    saved = tmp_path / "outputs.npz"
    out = example("edge_inference.py", edge, "--rows", ROWS, "--save", saved, cwd=tmp_path)
    lines = out.splitlines()
    assert lines[0].startswith("model digits-mlp (fp32), file digits-mlp.ort (")
    assert lines[0].endswith("bytes, sha256 ok)")
    assert "input x: float32 [-1, 64], outputs probabilities, hidden" in lines
    x, y = heldout()
    check_classification(out, x, y)
    want = reference.run(SPEC, x)
    with np.load(saved) as got:
        assert sorted(got) == ["hidden", "probabilities"]
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
        np.testing.assert_allclose(got["hidden"], want["hidden"], atol=1e-5, rtol=1e-4)


def test_edge_inference_on_unlabelled_rows_and_a_damaged_file(edge: Path, tmp_path: Path) -> None:
    x, _ = heldout(5)
    np.save(tmp_path / "rows.npy", x)
    out = example("edge_inference.py", edge, "--data", "rows.npy", cwd=tmp_path)
    check_classification(out, x, None)
    assert "accuracy" not in out

    damaged = tmp_path / "damaged"
    shutil.copytree(edge, damaged)
    ort_file = damaged / "digits-mlp.ort"
    ort_file.write_bytes(ort_file.read_bytes() + b"\0")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "edge_inference.py"), str(damaged)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "digits-mlp.ort: sha256 differs from manifest.json" in done.stderr


# ------------------------------------------------------------------------------ the index


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    scripts = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh"))
    assert len(scripts) == 6
    for name in scripts:
        assert f"examples/{name}" in readme, name
        text = (EXAMPLES / name).read_text()
        assert f"examples/{name}" in text, f"{name} does not say how to run it"
