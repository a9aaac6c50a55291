"""``onnxforge verify``: measured agreement with the reference; failure when it is not there."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxforge.builder import load_spec, reference, runtime
from onnxforge.builder.verify import sample_inputs
from tests.helpers import mlp_document


def _built(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], repo: Path, **overrides: Any
) -> Path:
    spec_path = write_spec(mlp_document(**overrides))
    assert run_cli("build", spec_path, "-r", repo).code == 0
    return spec_path


def test_verify_passes_and_reports_measured_errors(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = _built(write_spec, run_cli, tmp_path, expose=["0"])
    result = run_cli("verify", spec_path, "-r", tmp_path, "--samples", "100", "--json")
    assert result.code == 0, result.err
    [report] = json.loads(result.out)
    assert report["ok"] and report["samples"] == 100
    outputs = {o["output"]: o for o in report["outputs"]}
    assert set(outputs) == {"y", "0"}
    # Recompute the figures independently from the file and the reference.
    spec = load_spec(spec_path)
    x = sample_inputs(spec, 100, seed=0)
    got = runtime.session(str(tmp_path / "tiny/1/model.onnx")).run(["y"], {"x": x})[0]
    want = reference.forward(spec, x)
    assert outputs["y"]["max_abs"] == float(np.abs(got.astype(np.float64) - want).max())
    assert outputs["y"]["max_abs"] < 1e-6
    assert outputs["y"]["argmax_agreement"] == 1.0  # softmax output: a classifier
    assert outputs["0"]["argmax_agreement"] is None  # relu features: not a classifier
    table = run_cli("verify", spec_path, "-r", tmp_path)
    assert table.code == 0 and "max abs err" in table.out and "ok" in table.out


def test_tampered_file_fails_with_exit_1(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = _built(write_spec, run_cli, tmp_path)
    model_file = tmp_path / "tiny/1/model.onnx"
    model = onnx.load(str(model_file))
    bias = next(init for init in model.graph.initializer if init.name == "dense_1/bias")
    changed = numpy_helper.to_array(bias).copy()
    changed[0] += 0.5  # one class only: a shift of every logit would not change a softmax
    bias.CopyFrom(numpy_helper.from_array(changed, bias.name))
    onnx.save(model, str(model_file))  # metadata untouched: only the numbers can tell
    result = run_cli("verify", spec_path, "-r", tmp_path, "--json")
    assert result.code == 1
    [report] = json.loads(result.out)
    assert not report["ok"] and report["outputs"][0]["max_abs"] > 1e-3
    assert "OVER TOLERANCE" in run_cli("verify", spec_path, "-r", tmp_path).out
    # -q hides the table, not the failure: one line on stderr names the model and output.
    quiet = run_cli("-q", "verify", spec_path, "-r", tmp_path)
    assert quiet.code == 1 and quiet.out == ""
    [line] = quiet.err.strip().splitlines()
    assert line.startswith("onnxforge: tiny (fp32): output 'y' over tolerance (max abs err ")


def test_stale_and_missing_files_fail_with_a_reason(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = _built(write_spec, run_cli, tmp_path)
    spec_path.write_text(spec_path.read_text().replace("relu", "tanh"))
    stale = run_cli("verify", spec_path, "-r", tmp_path)
    assert stale.code == 1 and "built from an older version of the spec" in stale.out
    missing = run_cli("verify", spec_path, "-r", tmp_path / "elsewhere")
    assert missing.code == 1 and "not built" in missing.out
    quiet = run_cli("verify", spec_path, "-r", tmp_path / "elsewhere", "-q")
    assert quiet.code == 1 and quiet.out == "" and "not built" in quiet.err


def test_verify_on_user_rows(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = _built(write_spec, run_cli, tmp_path)
    rows = np.random.default_rng(5).normal(size=(7, 4)).astype(np.float32) * 100
    np.save(tmp_path / "rows.npy", rows)
    result = run_cli(
        "verify",
        spec_path,
        "-r",
        tmp_path,
        "--samples",
        "3",
        "--input",
        tmp_path / "rows.npy",
        "--json",
    )
    assert result.code == 0, result.err
    assert json.loads(result.out)[0]["samples"] == 10
    np.save(tmp_path / "bad.npy", rows[:, :3])
    bad = run_cli("verify", spec_path, "-r", tmp_path, "--input", tmp_path / "bad.npy")
    assert bad.code == 2
    assert "bad.npy" in bad.err and "expected (N, 4)" in bad.err
    np.save(tmp_path / "nan.npy", np.full((2, 4), np.nan, np.float32))
    nan = run_cli("verify", spec_path, "-r", tmp_path, "--input", tmp_path / "nan.npy")
    assert nan.code == 2 and "NaN" in nan.err


def test_sampling_follows_the_declared_distribution(write_spec: Callable[..., Path]) -> None:
    uniform = load_spec(
        write_spec(
            mlp_document(
                input={
                    "name": "x",
                    "shape": [4],
                    "distribution": {"uniform": {"low": 2, "high": 3}},
                }
            )
        )
    )
    x = sample_inputs(uniform, 2000, seed=1)
    assert x.dtype == np.float32 and x.min() >= 2 and x.max() < 3
    normal = load_spec(
        write_spec(
            mlp_document(
                input={
                    "name": "x",
                    "shape": [4],
                    "distribution": {"normal": {"mean": -5, "std": 0.5}},
                }
            )
        )
    )
    y = sample_inputs(normal, 4000, seed=1)
    assert abs(y.mean() + 5) < 0.05 and abs(y.std() - 0.5) < 0.05
    np.testing.assert_array_equal(sample_inputs(normal, 10, seed=1), y[:10])
