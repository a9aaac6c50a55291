"""Quantized variants: measured against the reference, recorded, and refused over budget."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxforge.builder import load_spec, metadata, reference, runtime
from onnxforge.builder.accuracy import HELD_OUT_ROWS, HELD_OUT_SEED, figures
from onnxforge.builder.samples import sample_inputs
from tests.conftest import MODELS
from tests.helpers import mlp_document

VARIANTS = ("fp16", "int8-dynamic", "int8-static")


def _props(path: Path) -> dict[str, str]:
    return metadata.props(onnx.load(str(path)))


def _run(path: Path, x: np.ndarray, output: str) -> np.ndarray:
    return runtime.session(str(path)).run([output], {"x": x})[0]


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from onnxforge.cli import main

    repo = tmp_path_factory.mktemp("repo")
    with pytest.raises(SystemExit) as done:
        main(["build", str(MODELS / "digits-mlp" / "spec.yaml"), "-r", str(repo), "--json"])
    assert done.value.code == 0
    return repo


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundled_variant_records_the_figures_it_really_has(digits_repo: Path, variant: str) -> None:
    spec = load_spec(MODELS / "digits-mlp" / "spec.yaml")
    path = digits_repo / f"digits-mlp-{variant}" / "1" / "model.onnx"
    props = _props(path)
    assert props[metadata.VARIANT] == variant
    assert props[metadata.SPEC_SHA256] == spec.sha256
    recorded = json.loads(props[metadata.ACCURACY])
    # Recompute the figures independently: the file, the held-out rows, the NumPy reference.
    x = sample_inputs(spec, HELD_OUT_ROWS, HELD_OUT_SEED)
    measured = figures(_run(path, x, "probabilities"), reference.forward(spec, x), True)
    assert recorded["samples"] == HELD_OUT_ROWS
    # No rows were given: the spec's declared distribution stands in, and the record says so.
    drawn = "input.distribution uniform(low=0, high=1)"
    assert recorded["rows"] == {
        "source": f"synthetic rows drawn with seed {HELD_OUT_SEED} from {drawn}",
        "count": HELD_OUT_ROWS,
        "synthetic": True,
    }
    for key in ("max_abs", "mean_abs", "cosine", "argmax_agreement"):
        assert recorded["outputs"]["probabilities"][key] == pytest.approx(getattr(measured, key))
    # And the figures mean something: quantization costs accuracy, within its budget.
    assert 0 < measured.max_abs < 0.2
    assert measured.argmax_agreement is not None and measured.argmax_agreement >= 0.95
    settings = json.loads(props[metadata.QUANTIZATION])
    assert settings["variant"] == variant
    assert settings["measured_on"] == recorded["rows"]["source"]
    if variant == "int8-static":
        assert settings["method"] == "minmax"
        assert settings["calibration"] == f"512 synthetic rows drawn with seed 1 from {drawn}"
        assert settings["calibration_synthetic"] is True
    else:  # nothing was calibrated
        assert "calibration" not in settings


def test_int8_files_hold_int8_weights_and_fp16_keeps_float_io(digits_repo: Path) -> None:
    fp32 = onnx.load(str(digits_repo / "digits-mlp/1/model.onnx"))
    for variant in ("int8-dynamic", "int8-static"):
        model = onnx.load(str(digits_repo / f"digits-mlp-{variant}/1/model.onnx"))
        types = {init.name: init.data_type for init in model.graph.initializer}
        assert types["hidden/weight_quantized"] == TensorProto.INT8
        assert "hidden/weight" not in types  # the float weight is gone
    fp16 = onnx.load(str(digits_repo / "digits-mlp-fp16/1/model.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {o.type.tensor_type.elem_type for o in fp16.graph.output} == {TensorProto.FLOAT}
    weights = {i.name: i.data_type for i in fp16.graph.initializer if i.name.endswith("weight")}
    assert set(weights.values()) == {TensorProto.FLOAT16}
    assert {o.name for o in fp16.graph.output} == {o.name for o in fp32.graph.output}


def test_verify_checks_variants_against_their_budget(
    digits_repo: Path, run_cli: Callable[..., Any]
) -> None:
    spec_path = MODELS / "digits-mlp" / "spec.yaml"
    result = run_cli("verify", spec_path, "-r", digits_repo, "--json")
    assert result.code == 0, result.out
    reports = {entry["model"]: entry for entry in json.loads(result.out)}
    assert set(reports) == {"digits-mlp", *(f"digits-mlp-{v}" for v in VARIANTS)}
    assert all(entry["ok"] for entry in reports.values())
    static = reports["digits-mlp-int8-static"]["accuracy"]["outputs"]["probabilities"]
    assert 0 < static["max_abs"] < 0.2


def _outlier_document(**overrides: Any) -> dict[str, Any]:
    """Feature 0 is ten thousand times larger than the rest, with a tiny weight.

    In float32 it hardly matters; quantizing each activation tensor with one scale rounds
    every other feature to zero, so int8 loses the signal.
    """
    std = [1e-4] + [1.0] * 15
    document = mlp_document(
        name="outliers",
        input={"name": "x", "shape": [16]},
        layers=[
            {"type": "normalize", "mean": 0.0, "std": std},
            {"type": "dense", "name": "hidden", "units": 32, "activation": "relu"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ],
        variants=["fp32", "int8-dynamic"],
    )
    document.update(overrides)
    return document


def _outlier_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    hidden = rng.normal(size=(16, 32)).astype(np.float32)
    hidden[0] *= 1e-4  # the outlier feature barely contributes in float
    return {
        "hidden.weight": hidden,
        "hidden.bias": np.zeros(32, np.float32),
        "2.weight": rng.normal(size=(32, 10)).astype(np.float32),
        "2.bias": np.zeros(10, np.float32),
    }


def test_outliers_break_int8_and_the_variant_is_refused(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = write_spec(_outlier_document(), _outlier_weights())
    result = run_cli("build", spec_path, "-r", tmp_path, "--json")
    assert result.code == 1
    rows = {row["model"]: row for row in json.loads(result.out)}
    assert rows["outliers"]["status"] == "written"
    refused = rows["outliers-int8-dynamic"]
    assert refused["status"] == "refused"
    agreement = refused["accuracy"]["outputs"]["y"]["argmax_agreement"]
    assert agreement < 0.95
    line = result.err.strip().splitlines()[-1]
    assert "int8-dynamic: over budget on 512 held-out rows" in line
    assert f"argmax_agreement {agreement:.4f} < 0.9500 (short by {0.95 - agreement:.3g})" in line
    assert 'layers[1] (dense "hidden")' in line  # the layer whose input gets crushed
    assert "not written" in line
    assert (tmp_path / "outliers" / "1" / "model.onnx").is_file()
    assert not (tmp_path / "outliers-int8-dynamic").exists()


def test_spec_budget_tightens_the_default(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    document = mlp_document(variants=["int8-dynamic"], budget={"int8-dynamic": {"max_abs": 1e-7}})
    result = run_cli("build", write_spec(document), "-r", tmp_path)
    assert result.code == 1
    assert "max_abs" in result.err and "> 1e-07 (over by" in result.err
    assert not (tmp_path / "tiny-int8-dynamic").exists()


def test_calibration_file_is_split_and_recorded(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    rows = np.random.default_rng(8).uniform(-3, 3, size=(100, 4)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    spec_path = write_spec(mlp_document(variants=["int8-static"]))
    result = run_cli(
        "build",
        spec_path,
        "-r",
        tmp_path / "repo",
        "--calibration",
        tmp_path / "rows.npy",
        "--calibration-method",
        "percentile",
        "--per-channel",
        "--json",
    )
    assert result.code == 0, result.err
    [row] = json.loads(result.out)
    assert row["accuracy"]["samples"] == 20  # only the file's last 20% are measured on
    assert row["accuracy"]["rows"] == {
        "source": "last 20 rows of rows.npy, the 20% kept back from calibration",
        "count": 20,
        "synthetic": False,
    }
    props = _props(tmp_path / "repo" / "tiny-int8-static" / "1" / "model.onnx")
    settings = json.loads(props[metadata.QUANTIZATION])
    assert settings["calibration"] == "80 rows of rows.npy"
    assert settings["method"] == "percentile" and settings["per_channel"] is True
    model = onnx.load(str(tmp_path / "repo" / "tiny-int8-static" / "1" / "model.onnx"))
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert scales["dense_0/weight_scale"].shape == (3,)  # one scale per output unit


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: np.save(p, np.zeros((10, 5), np.float32)), "does not fit"),
        (lambda p: np.save(p, np.full((10, 4), np.nan, np.float32)), "NaN or Inf"),
        (lambda p: np.save(p, np.array([["a"] * 4] * 10)), "is not numeric"),
        (lambda p: np.save(p, np.zeros((0, 4), np.float32)), "holds no rows"),
        (lambda p: np.save(p, np.zeros((3, 4), np.float32)), "needs at least 5"),
        (lambda p: p.write_bytes(b""), "not a .npy file"),
        (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a readable .npy"),
        (lambda p: np.save(p, np.array([{"a": 1}] * 10, dtype=object)), "pickled"),
    ],
    ids=["shape", "nan", "strings", "empty-array", "too-few", "empty-file", "corrupt", "pickle"],
)
def test_bad_calibration_file_is_one_line_and_writes_nothing(
    make: Callable[[Path], None],
    fragment: str,
    write_spec: Callable[..., Path],
    run_cli: Callable[..., Any],
    tmp_path: Path,
) -> None:
    calibration = tmp_path / "rows.npy"
    make(calibration)
    spec_path = write_spec(mlp_document(variants=["fp32", "int8-static"]))
    result = run_cli("build", spec_path, "-r", tmp_path / "repo", "--calibration", calibration)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err
    assert lines[0].startswith(f"onnxforge: error: {calibration}: ") and fragment in lines[0]
    assert not (tmp_path / "repo").exists()


def _foreign_model(path: Path) -> np.ndarray:
    """An fp32 file onnxforge did not build: Gemm + Relu + MatMul, other names, no metadata."""
    rng = np.random.default_rng(12)
    w1 = rng.normal(size=(8, 24)).astype(np.float32)
    w2 = rng.normal(size=(24, 5)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["a"], name="act"),
            helper.make_node("MatMul", ["a", "w2"], ["out"], name="fc2"),
        ],
        "foreign",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5])],
        initializer=[
            onnx.numpy_helper.from_array(w1, "w1"),
            onnx.numpy_helper.from_array(np.zeros(24, np.float32), "b1"),
            onnx.numpy_helper.from_array(w2, "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return w1


@pytest.mark.parametrize("variant", VARIANTS)
def test_quantize_a_file_onnxforge_did_not_build(
    variant: str, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    source, out = tmp_path / "foreign.onnx", tmp_path / "out" / "foreign-q.onnx"
    _foreign_model(source)
    result = run_cli("quantize", source, "--variant", variant, "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    x = np.random.default_rng(HELD_OUT_SEED).standard_normal((HELD_OUT_ROWS, 8)).astype(np.float32)
    want = runtime.session(str(source)).run(["out"], {"input": x})[0]
    got = runtime.session(str(out)).run(["out"], {"input": x})[0]
    measured = figures(got, want, classifier=True)
    assert report["outputs"]["out"]["max_abs"] == pytest.approx(measured.max_abs)
    assert report["budget"] == ({"cosine": 0.9999} if variant == "fp16" else {"cosine": 0.99})
    assert _props(out)[metadata.VARIANT] == variant
    # The weight matrices shrink to a half (fp16) or a quarter (int8) of their float32 bytes.
    ratio = _matrix_bytes(out) / _matrix_bytes(source)
    assert ratio == (0.5 if variant == "fp16" else 0.25)


def _matrix_bytes(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(
        onnx.numpy_helper.to_array(i).nbytes for i in model.graph.initializer if len(i.dims) == 2
    )


def test_quantize_refuses_over_budget_and_writes_nothing(
    run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    source, out = tmp_path / "foreign.onnx", tmp_path / "q.onnx"
    _foreign_model(source)
    result = run_cli(
        "quantize", source, "--variant", "int8-dynamic", "-o", out, "--budget", "max_abs=1e-9"
    )
    assert result.code == 1
    assert "over budget" in result.err and "max_abs" in result.err and "node fc" in result.err
    assert not out.exists()
    bad = run_cli("quantize", source, "--variant", "int8-dynamic", "-o", out, "--budget", "x=1")
    assert bad.code == 2 and "--budget" in bad.err


def test_quantize_refuses_garbage(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a model")
    result = run_cli("quantize", garbage, "--variant", "fp16", "-o", tmp_path / "q.onnx")
    assert result.code == 2 and "not a readable ONNX model" in result.err
    assert len(result.err.strip().splitlines()) == 1
