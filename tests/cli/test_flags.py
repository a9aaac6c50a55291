"""Flags where users put them, quiet meaning quiet, and names a user mistypes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from onnxforge.builder.activations import ACTIVATIONS
from onnxforge.cli import cli
from tests.builder.errors import assert_nothing_written, assert_one_line_error
from tests.conftest import MODELS, CliResult
from tests.helpers import mlp_document

COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_quiet_and_verbose_after_it(
    command: str, run_cli: Callable[..., CliResult]
) -> None:
    result = run_cli(command, "--help")
    assert result.code == 0
    assert "-q, --quiet" in result.out and "-v, --verbose" in result.out


@pytest.mark.parametrize("where", ["before", "after"])
def test_build_quiet_before_or_after_the_command(
    where: str,
    tmp_path: Path,
    write_spec: Callable[..., Path],
    run_cli: Callable[..., CliResult],
) -> None:
    spec = write_spec(mlp_document())
    args = ["build", spec, "-r", tmp_path / "repo", "--variants", "fp32"]
    result = run_cli("-q", *args) if where == "before" else run_cli(*args, "-q")
    assert result.code == 0, result.err
    assert (result.out, result.err) == ("", "")
    assert (tmp_path / "repo" / "tiny" / "1" / "model.onnx").is_file()
    loud = run_cli(*args)  # the next run is not quiet: the flag does not stick
    assert "tiny" in loud.out


def test_quantize_quiet_prints_nothing_and_writes_the_file(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(MODELS / "digits-mlp" / "1" / "model.onnx", model)
    loud = run_cli("quantize", model, "--variant", "fp16", "-o", tmp_path / "loud.onnx")
    assert loud.code == 0, loud.err
    assert loud.out.startswith(f"{tmp_path / 'loud.onnx'}: fp16, ")
    assert "warning: " in loud.err  # no calibration rows given
    for flags in (("-q", "quantize"), ("quantize", "-q")):
        out = tmp_path / f"{flags[0]}.onnx"
        result = run_cli(*flags, model, "--variant", "fp16", "-o", out)
        assert result.code == 0, result.err
        assert (result.out, result.err) == ("", "")
        assert out.read_bytes() == (tmp_path / "loud.onnx").read_bytes()


def test_export_edge_quiet_prints_nothing(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    result = run_cli(
        "export-edge", MODELS / "digits-mlp" / "1" / "model.onnx", "--out", tmp_path / "e", "-q"
    )
    assert result.code == 0, result.err
    assert (result.out, result.err) == ("", "")
    assert (tmp_path / "e" / "manifest.json").is_file()


def test_quantize_a_file_that_does_not_exist(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    missing = tmp_path / "nothere.onnx"
    result = run_cli("quantize", missing, "--variant", "int8-dynamic", "-o", tmp_path / "o.onnx")
    line = assert_one_line_error(result, missing)
    assert line == f"onnxforge: error: {missing}: file not found"
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("layer", "field", "reason"),
    [
        ({"activation": "Relu"}, "activation", "unknown activation 'Relu' (did you mean 'relu'?)"),
        (
            {"activation": "swish"},
            "activation",
            "unknown activation 'swish' (did you mean 'silu'?)",
        ),
        (
            {"activation": {"name": "LeakyReLU", "alpha": 0.1}},
            "activation",
            "unknown activation 'LeakyReLU' (did you mean 'leaky_relu'?)",
        ),
        (
            {"init": "kaiming"},
            "init",
            "got 'kaiming' (did you mean 'he_normal' or 'he_uniform'?)",
        ),
        ({"init": "kaiming_uniform"}, "init", "got 'kaiming_uniform' (did you mean 'he_uniform'?)"),
        ({"init": "Glorot_Normal"}, "init", "got 'Glorot_Normal' (did you mean 'glorot_normal'?)"),
        ({"init": "xavier"}, "init", "(did you mean 'xavier_uniform' or 'xavier_normal'?)"),
    ],
)
def test_a_misnamed_activation_or_init_gets_a_suggestion(
    layer: dict[str, object],
    field: str,
    reason: str,
    tmp_path: Path,
    write_spec: Callable[..., Path],
    run_cli: Callable[..., CliResult],
) -> None:
    document = mlp_document()
    document["layers"] = [{"type": "dense", "units": 3, **layer}, document["layers"][1]]
    spec = write_spec(document)
    result = run_cli("build", spec, "-r", tmp_path / "repo")
    line = assert_one_line_error(result, spec, 'layers[0] (dense "0")', field, (reason,))
    assert line.count("did you mean") == 1
    assert_nothing_written(tmp_path / "repo")


def test_no_suggestion_for_a_name_like_none(
    tmp_path: Path, write_spec: Callable[..., Path], run_cli: Callable[..., CliResult]
) -> None:
    document = mlp_document()
    document["layers"][0]["activation"] = "zzz"
    spec = write_spec(document)
    result = run_cli("build", spec, "-r", tmp_path / "repo")
    line = assert_one_line_error(result, spec, 'layers[0] (dense "0")', "activation")
    assert line.endswith(f"unknown activation 'zzz'; known: {', '.join(ACTIVATIONS)}")
