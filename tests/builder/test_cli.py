"""The ``onnxforge`` command line: version, flags, YAML/JSON specs, and the real entry point."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

import onnxforge
from onnxforge.builder import load_spec
from tests.builder.errors import assert_nothing_written, assert_one_line_error
from tests.conftest import CliResult
from tests.helpers import mlp_document

LAYERNORM_SPEC = """\
name: eps
input: {shape: [4]}
layers:
  - {type: layernorm, epsilon: 1e-3}
  - {type: batchnorm, epsilon: 2E-4}
  - {type: dense, units: 2}
"""


def test_version_prints_the_package_version(run_cli: Callable[..., CliResult]) -> None:
    result = run_cli("--version")
    assert result.code == 0
    assert result.err == ""
    assert result.out.strip() == f"onnxforge, version {onnxforge.__version__}"


@pytest.mark.parametrize("exists", [True, False], ids=["empty-repository", "no-repository"])
def test_build_without_spec_and_nothing_to_find(
    exists: bool, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    repository = tmp_path / "repo"
    if exists:
        repository.mkdir()
    result = run_cli("build", "--repository", repository)
    line = assert_one_line_error(result, "no spec given", reason=(str(repository), "spec.yaml"))
    assert line.startswith("onnxforge: error: no spec given and none found in ")
    assert_nothing_written(repository)


@pytest.mark.parametrize("flag", ["bogus", "fp32,bogus", ","], ids=["bogus", "mixed", "empty"])
def test_build_with_unknown_variant_flag(
    flag: str,
    tmp_path: Path,
    write_spec: Callable[..., Path],
    run_cli: Callable[..., CliResult],
) -> None:
    spec = write_spec(mlp_document())
    repository = tmp_path / "repo"
    result = run_cli("build", spec, "--repository", repository, "--variants", flag)
    line = assert_one_line_error(result, "Invalid value for --variants", reason=("choose from",))
    assert "fp32, fp16, int8-dynamic, int8-static" in line
    if "bogus" in flag:
        assert "unknown variant(s) bogus" in line
    assert_nothing_written(repository)


def test_unknown_option_is_one_line(run_cli: Callable[..., CliResult]) -> None:
    result = run_cli("build", "--nope")
    assert_one_line_error(result, "No such option", reason=("--nope",))


def test_exponent_without_a_dot_is_a_float(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    spec = tmp_path / "eps" / "spec.yaml"
    spec.parent.mkdir()
    spec.write_text(LAYERNORM_SPEC)
    loaded = load_spec(spec)
    assert [layer.config.epsilon for layer in loaded.layers[:2]] == [1e-3, 2e-4]
    assert all(type(layer.config.epsilon) is float for layer in loaded.layers[:2])

    repository = tmp_path / "repo"
    result = run_cli("build", spec, "--repository", repository)
    assert result.code == 0, result.err
    model = onnx.load(str(repository / "eps" / "1" / "model.onnx"))
    epsilons = {
        node.op_type: onnx.helper.get_attribute_value(attribute)
        for node in model.graph.node
        for attribute in node.attribute
        if attribute.name == "epsilon"
    }
    assert epsilons == pytest.approx({"LayerNormalization": 1e-3, "BatchNormalization": 2e-4})


def test_negative_exponent_float_is_still_range_checked(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    spec = tmp_path / "eps" / "spec.yaml"
    spec.parent.mkdir()
    spec.write_text(LAYERNORM_SPEC.replace("epsilon: 1e-3", "epsilon: -1e-3"))
    repository = tmp_path / "repo"
    result = run_cli("build", spec, "--repository", repository)
    assert_one_line_error(
        result,
        spec,
        'layers[0] (layernorm "0")',
        "epsilon",
        ("must be greater than 0", "got -0.001"),
    )
    assert_nothing_written(repository)


def test_json_spec_builds(
    tmp_path: Path, write_spec: Callable[..., Path], run_cli: Callable[..., CliResult]
) -> None:
    spec = write_spec(mlp_document(name="from-json"), file_name="spec.json")
    assert spec.suffix == ".json"
    repository = tmp_path / "repo"
    result = run_cli("build", spec, "--repository", repository, "--json")
    assert result.code == 0, result.err
    assert result.err == ""
    model_file = repository / "from-json" / "1" / "model.onnx"
    assert model_file.is_file()
    assert (repository / "from-json" / "config.pbtxt").is_file()
    model = onnx.load(str(model_file))
    assert [output.name for output in model.graph.output] == ["y"]
    assert [graph_input.name for graph_input in model.graph.input] == ["x"]


def test_console_entry_point_reports_a_bad_spec_without_traceback(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """The real ``python -m onnxforge`` process: exit 2, one line, no traceback."""
    spec = write_spec(mlp_document(layers=[{"type": "dense", "name": "hidden", "units": -4}]))
    repository = tmp_path / "repo"
    done = subprocess.run(
        [sys.executable, "-m", "onnxforge", "build", str(spec), "--repository", str(repository)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = CliResult(done.returncode, done.stdout, done.stderr)
    assert_one_line_error(
        result, spec, 'layers[0] (dense "hidden")', "units", ("must be greater than 0", "got -4")
    )
    assert_nothing_written(repository)


def test_quiet_prints_nothing_and_verbose_says_what_it_does(
    run_cli: Callable[..., CliResult],
    write_spec: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = write_spec(mlp_document())
    quiet = run_cli("-q", "build", spec, "-r", tmp_path / "repo")
    assert quiet.code == 0 and quiet.out == "" and quiet.err == ""
    assert (tmp_path / "repo" / "tiny" / "1" / "model.onnx").is_file()
    caplog.set_level("INFO")
    verbose = run_cli("-v", "build", spec, "-r", tmp_path / "repo")
    assert verbose.code == 0
    assert "building tiny (fp32)" in caplog.text and "unchanged" in caplog.text
