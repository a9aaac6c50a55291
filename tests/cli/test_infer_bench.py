"""``onnxforge infer`` and ``bench`` as a user runs them, against a real ``onnxforge serve``.

The rows a user has at hand (float64 from NumPy, one row without the batch axis, uint8
pixels) are fitted to the model with a note; casts that change values are refused; the
table cuts values with an ellipsis and shows an argmax only for class scores; a ``--url``
without a port means 8001; ``bench --plot`` without matplotlib stops before any load.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import numpy as np
import pytest

from onnxforge.builder import load_spec, reference
from onnxforge.cli import connect as cli_connect
from onnxforge.cli.connect import connection
from onnxforge.cli.infer_table import class_scores, fit_inputs
from onnxforge.client import InferenceClient
from onnxforge.client import connection as client_connection
from onnxforge.protocol.generated import inference_pb2 as pb
from tests.builder.errors import assert_one_line_error
from tests.conftest import MODELS, CliResult
from tests.server.processes import ServeProcess

SPEC = MODELS / "digits-mlp" / "spec.yaml"
ALL_VARIANTS = "variants: [fp32, fp16, int8-dynamic, int8-static]"


def digits_repository(folder: Path) -> Path:
    """digits-mlp's spec and weights, fp32 only (the server builds it at start)."""
    (folder / "digits-mlp").mkdir(parents=True)
    shutil.copy(MODELS / "digits-mlp" / "weights.npz", folder / "digits-mlp")
    text = SPEC.read_text()
    assert ALL_VARIANTS in text
    (folder / "digits-mlp" / "spec.yaml").write_text(text.replace(ALL_VARIANTS, "variants: [fp32]"))
    return folder


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = ServeProcess(digits_repository(tmp_path_factory.mktemp("repo")))
    yield server
    server.close()


def want(x: np.ndarray) -> dict[str, np.ndarray]:
    return reference.run(load_spec(SPEC), x)


def infer_json(run_cli: Callable[..., CliResult], url: str, *args: str | Path) -> CliResult:
    return run_cli("infer", "digits-mlp", "--url", url, "--json", *args)


def test_float64_rows_are_cast_to_the_models_float32_with_a_note(
    serving: ServeProcess, run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    x = np.random.default_rng(1).uniform(size=(3, 64))
    assert x.dtype == np.float64
    np.save(tmp_path / "x.npy", x)
    result = infer_json(run_cli, serving.url, "--input", f"x={tmp_path / 'x.npy'}")
    assert result.code == 0, result.err
    assert result.err == (
        f"onnxforge: note: input 'x': {tmp_path / 'x.npy'} holds float64: cast to float32, "
        "the model's type (FP32)\n"
    )
    got = json.loads(result.out)
    expected = want(x.astype(np.float32))
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-6)
    # With -q the note goes; the answer stays.
    quiet = infer_json(run_cli, serving.url, "-q", "--input", f"x={tmp_path / 'x.npy'}")
    assert quiet.code == 0 and quiet.err == ""
    assert json.loads(quiet.out) == got


def test_uint8_rows_cast_without_loss(
    serving: ServeProcess, run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    x = np.random.default_rng(2).integers(0, 2, size=(2, 64)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    result = infer_json(run_cli, serving.url, "--input", f"x={tmp_path / 'x.npy'}")
    assert result.code == 0, result.err
    assert "holds uint8: cast to float32" in result.err
    got = json.loads(result.out)
    np.testing.assert_allclose(
        got["probabilities"], want(x.astype(np.float32))["probabilities"], atol=1e-6
    )


def test_a_single_row_gets_the_batch_axis_with_a_note(
    serving: ServeProcess, run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    row = np.random.default_rng(3).uniform(size=64).astype(np.float32)
    np.save(tmp_path / "row.npy", row)
    result = infer_json(run_cli, serving.url, "--input", f"x={tmp_path / 'row.npy'}")
    assert result.code == 0, result.err
    assert result.err == (
        f"onnxforge: note: input 'x': {tmp_path / 'row.npy'} holds one row of shape [64]: "
        "sent as a batch of 1, shape [1, 64]\n"
    )
    got = json.loads(result.out)
    assert np.asarray(got["probabilities"]).shape == (1, 10)
    np.testing.assert_allclose(
        got["probabilities"], want(row[np.newaxis])["probabilities"], atol=1e-6
    )


def test_int64_rows_are_refused_in_one_line(
    serving: ServeProcess, run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.full((2, 64), 2**40, dtype=np.int64))
    result = run_cli("infer", "digits-mlp", "--url", serving.url, "--input", f"x={tmp_path}/x.npy")
    line = assert_one_line_error(result, "input 'x'")
    assert line.endswith(
        "holds int64, the model takes float32 (FP32); int64 to float32 can change values, "
        "so it is not cast: save the array as float32"
    )


def test_a_row_of_the_wrong_width_is_left_to_the_server(
    serving: ServeProcess, run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.zeros(63, dtype=np.float32))
    result = run_cli("infer", "digits-mlp", "--url", serving.url, "--input", f"x={tmp_path}/x.npy")
    assert_one_line_error(result, "INVALID_ARGUMENT: input 'x': shape [63]")


def test_float_to_integer_is_refused() -> None:
    """A model with an INT64 input (none is bundled): the float file is not cast."""
    metadata = pb.ModelMetadataResponse(
        name="ids",
        inputs=[
            pb.ModelMetadataResponse.TensorMetadata(name="ids", datatype="INT64", shape=[-1, 3])
        ],
    )
    with pytest.raises(click.UsageError, match="float32 to int64 can change values"):
        fit_inputs({"ids": np.zeros((1, 3), np.float32)}, {"ids": "ids.npy"}, metadata)
    # An int32 file casts to int64 without loss; a single row gets the batch axis.
    fitted = fit_inputs({"ids": np.array([1, 2, 3], np.int32)}, {"ids": "ids.npy"}, metadata)
    assert fitted["ids"].dtype == np.int64
    assert fitted["ids"].tolist() == [[1, 2, 3]]


def table_row(out: str, name: str) -> list[str]:
    """The cells of the table row that starts with output ``name``."""
    line = next(line for line in out.splitlines() if line.startswith(f"│ {name} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_table_cuts_values_with_an_ellipsis_and_argmax_only_for_class_scores(
    serving: ServeProcess, run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    x = np.random.default_rng(4).uniform(size=(4, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_cli("infer", "digits-mlp", "--url", serving.url, "--input", f"x={tmp_path}/x.npy")
    assert result.code == 0, result.err
    expected = want(x)
    probabilities = table_row(result.out, "probabilities")
    assert probabilities[1:3] == ["float32", "[4, 10]"]
    argmax = ", ".join(str(i) for i in expected["probabilities"].argmax(axis=1))
    assert probabilities[4] == argmax
    hidden = table_row(result.out, "hidden")
    assert hidden[1:3] == ["float32", "[4, 32]"]
    assert hidden[4] == "-"  # an embedding: no argmax
    # Six values of 128 shown, and said so (the cell may wrap onto the next line).
    assert "(128 values)" in result.out and "(40 values)" in result.out
    assert result.out.count("…]") == 2


def test_which_outputs_are_class_scores() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 5)).astype(np.float32)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    embedding = np.abs(logits)
    assert class_scores("logits", logits, None)  # by name
    assert class_scores("y", softmax, None)  # rows sum to 1
    assert not class_scores("y", logits, None)
    assert not class_scores("hidden", embedding, None)
    record = {"outputs": {"y": {"argmax_agreement": 1.0}, "hidden": {"argmax_agreement": None}}}
    assert class_scores("y", logits, record)  # the builder measured argmax agreement
    assert not class_scores("hidden", embedding, record)
    assert not class_scores("probabilities", softmax[:, :1], None)  # one column
    assert not class_scores("probabilities", softmax.ravel(), None)  # not 2-D


@pytest.mark.parametrize(
    ("given", "address"),
    [
        ("localhost", "localhost:8001"),
        ("10.0.0.2", "10.0.0.2:8001"),
        ("[::1]", "[::1]:8001"),
        ("::1", "[::1]:8001"),
        ("localhost:9001", "localhost:9001"),
        ("[::1]:9001", "[::1]:9001"),
    ],
)
def test_a_host_without_a_port_means_8001(given: str, address: str) -> None:
    assert connection(given, None, None, None, None).url == address
    assert cli_connect.DEFAULT_PORT == client_connection.DEFAULT_PORT == 8001


def test_url_localhost_reaches_port_8001(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """A real server on 8001 and ``--url localhost`` in infer, bench and verify."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8001))
        except OSError:
            pytest.skip("port 8001 is in use on this machine")
    repository = digits_repository(tmp_path / "repo")
    with ServeProcess(repository, "--port", "8001") as server:
        assert server.port == 8001
        np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
        result = run_cli(
            "infer", "digits-mlp", "--url", "localhost", "--input", f"x={tmp_path}/x.npy"
        )
        assert result.code == 0, result.err
        assert "digits-mlp @ localhost:8001" in result.out
        bench = run_cli(
            "bench",
            "digits-mlp",
            "--url",
            "localhost",
            "--duration",
            "0.1",
            "--concurrency",
            "1",
            "--json",
        )
        assert bench.code == 0, bench.err
        assert json.loads(bench.out)[0]["errors"] == 0
        verify = run_cli("verify", "--url", "localhost", "digits-mlp", "-r", repository, "--json")
        assert verify.code == 0, verify.err


def test_bench_plot_without_matplotlib_stops_before_any_load(
    serving: ServeProcess,
    run_cli: Callable[..., CliResult],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def inferences() -> int:
        with InferenceClient(serving.url) as client:
            return sum(
                stats.inference_count for stats in client.statistics("digits-mlp", timeout=30)
            )

    before = inferences()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an uninstalled package does
    plot = tmp_path / "bench.png"
    result = run_cli(
        "bench", "digits-mlp", "--url", serving.url, "--duration", "0.5", "--plot", plot
    )
    assert_one_line_error(
        result, "--plot needs matplotlib: pip install -e '.[bench]' (or pip install matplotlib)"
    )
    assert not plot.exists()
    assert inferences() == before  # no request was sent


def test_tune_plot_without_matplotlib_is_the_same_line(
    run_cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run_cli("tune", "digits-mlp", "-r", tmp_path, "--plot", tmp_path / "tune.png")
    assert_one_line_error(result, "--plot needs matplotlib")
