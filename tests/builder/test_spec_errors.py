"""Errors for bad specs: one line naming file, layer and field; exit 2; nothing written.

Every case runs ``onnxforge build SPEC --repository REPO`` in-process and checks the whole
contract of DESIGN.md ("Errors"): exit code 2, exactly one line on stderr that starts with
``onnxforge: error: <spec file>: <layer>: <field>``, a fragment of the reason, no traceback,
nothing on stdout, and no file at all in the repository.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.builder.errors import assert_nothing_written, assert_one_line_error
from tests.conftest import CliResult
from tests.helpers import mlp_document

# mlp_document(): input (4,), layers[0] dense 3 relu, layers[1] dense 2 softmax.
FIRST = {"type": "dense", "units": 3, "activation": "relu"}
LAST = {"type": "dense", "units": 2, "activation": "softmax"}
HIDDEN = 'layers[1] (dense "hidden")'


def with_layers(*layers: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    return mlp_document(layers=[dict(layer) for layer in layers], **overrides)


def hidden(**fields: Any) -> dict[str, Any]:
    """A dense layer named "hidden" at index 1; ``units=None`` drops the key."""
    layer: dict[str, Any] = {"type": "dense", "name": "hidden", "units": 2}
    layer.update(fields)
    return {key: value for key, value in layer.items() if value is not None}


def mlp_weights(
    changes: Mapping[str, np.ndarray | None] | None = None, layout: str = "in_out"
) -> dict[str, np.ndarray]:
    """Valid weights for mlp_document() (4 -> 3 -> 2), with ``changes``; None removes a key."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 3)).astype(np.float32)
    w1 = rng.standard_normal((3, 2)).astype(np.float32)
    if layout == "out_in":
        w0, w1 = np.ascontiguousarray(w0.T), np.ascontiguousarray(w1.T)
    weights = {
        "0.weight": w0,
        "0.bias": np.zeros(3, np.float32),
        "1.weight": w1,
        "1.bias": np.zeros(2, np.float32),
    }
    for key, value in (changes or {}).items():
        if value is None:
            weights.pop(key)
        else:
            weights[key] = value
    return weights


def _with_value(array: np.ndarray, index: tuple[int, ...], value: float) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


@dataclass(frozen=True)
class Bad:
    """One bad spec and what its error line must say."""

    document: dict[str, Any] | None = None  # written as YAML (or JSON) by write_spec
    weights: dict[str, np.ndarray] | None = None
    text: str | bytes | None = None  # raw spec file contents instead of a document
    weights_bytes: bytes | None = None  # raw weights.npz contents
    file_name: str = "spec.yaml"
    where: str = ""  # the layer label, e.g. 'layers[1] (dense "hidden")'
    field: str = ""  # the offending field
    reason: tuple[str, ...] = ()  # fragments the line must contain
    absent: tuple[str, ...] = ()  # fragments the line must not contain
    args: tuple[str, ...] = ()  # extra command-line arguments


def write_bad(case: Bad, tmp_path: Path, write_spec: Callable[..., Path]) -> Path:
    if case.document is not None:
        path = write_spec(case.document, case.weights, file_name=case.file_name)
    else:
        folder = tmp_path / "raw"
        folder.mkdir()
        path = folder / case.file_name
        if isinstance(case.text, bytes):
            path.write_bytes(case.text)
        elif case.text is not None:
            path.write_text(case.text, encoding="utf-8")
    if case.weights_bytes is not None:
        (path.parent / "weights.npz").write_bytes(case.weights_bytes)
    return path


def files_under(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


CASES = [
    # --- layer types, activations -------------------------------------------------------
    pytest.param(
        Bad(
            with_layers({"type": "conv", "name": "c", "units": 3}, LAST),
            where='layers[0] (conv "c")',
            field="type",
            reason=("unknown layer type 'conv'", "dense, activation"),
        ),
        id="unknown-layer-type",
    ),
    pytest.param(
        Bad(
            with_layers({"units": 3}, LAST),
            where='layers[0] (? "0")',
            field="type",
            reason=("missing", "dense"),
        ),
        id="layer-type-missing",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(activation="relu6")),
            where=HIDDEN,
            field="activation",
            reason=("unknown activation 'relu6'", "leaky_relu"),
        ),
        id="unknown-activation-name",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(activation={"name": "relu6", "alpha": 0.1})),
            where=HIDDEN,
            field="activation",
            reason=("unknown activation 'relu6'",),
        ),
        id="unknown-activation-mapping",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(activation={"name": "relu", "alpha": 0.1})),
            where=HIDDEN,
            field="activation",
            reason=("activation 'relu' takes no parameter 'alpha'",),
        ),
        id="relu-with-alpha",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(activation={"name": "elu", "alpah": 0.1})),
            where=HIDDEN,
            field="activation.alpah",
            reason=("unknown field", "did you mean 'alpha'"),
        ),
        id="activation-parameter-typo",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(activation={"name": "gelu", "approximate": "fast"})),
            where=HIDDEN,
            field="activation",
            reason=("got 'fast'", "none, tanh"),
        ),
        id="gelu-unknown-approximation",
    ),
    # --- units ------------------------------------------------------------------------
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(units=None)),
            where=HIDDEN,
            field="units",
            reason=("missing",),
        ),
        id="units-missing",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(units=0)),
            where=HIDDEN,
            field="units",
            reason=("must be greater than 0", "got 0"),
        ),
        id="units-zero",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(units=-4)),
            where=HIDDEN,
            field="units",
            reason=("must be greater than 0", "got -4"),
        ),
        id="units-negative",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(units="32")),
            where=HIDDEN,
            field="units",
            reason=("integer", "got '32'"),
        ),
        id="units-string",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(units=2.5)),
            where=HIDDEN,
            field="units",
            reason=("integer", "got 2.5"),
        ),
        id="units-fraction",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(units=True)),
            where=HIDDEN,
            field="units",
            reason=("integer", "got True"),
        ),
        id="units-bool",
    ),
    # --- unknown fields (typos) ---------------------------------------------------------
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(units=None, unitz=2)),
            where=HIDDEN,
            field="unitz",
            reason=("unknown field", "did you mean 'units'"),
        ),
        id="layer-field-typo",
    ),
    pytest.param(
        Bad(
            {key if key != "layers" else "layer": value for key, value in mlp_document().items()},
            field="layer",
            reason=("unknown field", "did you mean 'layers'"),
        ),
        id="top-level-field-typo",
    ),
    pytest.param(
        Bad(
            mlp_document(zzzzqq=1),
            field="zzzzqq",
            reason=("unknown field", "allowed: name, description"),
        ),
        id="top-level-unknown-field-without-hint",
    ),
    pytest.param(
        Bad(
            {"name": "tiny", "input": {"shape": [4]}},
            field="layers",
            reason=("missing",),
        ),
        id="layers-missing",
    ),
    pytest.param(
        Bad(mlp_document(layers=[]), field="layers", reason=("at least 1",)),
        id="layers-empty",
    ),
    pytest.param(
        Bad({"name": "tiny", "layers": [FIRST]}, field="input", reason=("missing",)),
        id="input-missing",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, hidden(init="he")),
            where=HIDDEN,
            field="init",
            reason=("he_normal", "got 'he'"),
        ),
        id="unknown-init-scheme",
    ),
    # --- model name ---------------------------------------------------------------------
    pytest.param(
        Bad(mlp_document(name="Tiny"), field="name", reason=("got 'Tiny'",)),
        id="name-uppercase",
    ),
    pytest.param(
        Bad(mlp_document(name="my model"), field="name", reason=("got 'my model'",)),
        id="name-with-space",
    ),
    pytest.param(
        Bad(mlp_document(name="a" * 65), field="name", reason=("got 'aaaa",)),
        id="name-65-chars",
    ),
    pytest.param(
        Bad(mlp_document(name="-tiny"), field="name", reason=("got '-tiny'",)),
        id="name-leading-dash",
    ),
    pytest.param(
        Bad(mlp_document(name=""), field="name", reason=("got ''",)),
        id="name-empty",
    ),
    # --- weights file ---------------------------------------------------------------------
    pytest.param(
        Bad(
            mlp_document(weights="nope.npz"),
            field="weights",
            reason=("file not found", "nope.npz"),
        ),
        id="weights-file-missing",
    ),
    pytest.param(
        Bad(
            mlp_document(weights="weights.npz"),
            weights_bytes=b"these bytes are not a zip archive\x00\x01\x02\xff" * 8,
            field="weights",
            reason=("weights.npz is not an .npz (zip) archive",),
            # np.load falls back to unpickling anything that is not a zip or .npy file;
            # the user must not be told their random file "contains pickled (object) data".
            absent=("pickle",),
        ),
        id="weights-not-a-zip",
    ),
    pytest.param(
        Bad(
            mlp_document(weights="weights.npz"),
            weights_bytes=b"",
            field="weights",
            reason=("weights.npz is not an .npz (zip) archive",),
        ),
        id="weights-empty-file",
    ),
    pytest.param(
        Bad(
            mlp_document(),
            mlp_weights({"0.bias": np.array([1.0, None, 2.0], dtype=object)}),
            field="weights",
            reason=("weights.npz['0.bias'] holds Python objects (pickled)", "never loaded"),
        ),
        id="weights-object-array",
    ),
    pytest.param(
        Bad(
            mlp_document(),
            mlp_weights({"0.weight": mlp_weights()["0.weight"].T.copy()}),
            where='layers[0] (dense "0")',
            field="weight",
            reason=("has shape (3, 4)", "expected (4, 3)", "in_out", "(inputs, units)"),
        ),
        id="weight-shape-transposed-in_out",
    ),
    pytest.param(
        Bad(
            mlp_document(weight_layout="out_in"),
            mlp_weights({"0.weight": mlp_weights()["0.weight"]}, layout="out_in"),
            where='layers[0] (dense "0")',
            field="weight",
            reason=("has shape (4, 3)", "expected (3, 4)", "out_in", "(units, inputs)"),
        ),
        id="weight-shape-transposed-out_in",
    ),
    pytest.param(
        Bad(
            mlp_document(),
            mlp_weights({"1.bias": np.zeros(3, np.float32)}),
            where='layers[1] (dense "1")',
            field="bias",
            reason=("has shape (3,)", "expected (2,)"),
        ),
        id="bias-shape",
    ),
    pytest.param(
        Bad(
            mlp_document(),
            mlp_weights({"1.bias": None}),
            where='layers[1] (dense "1")',
            field="bias",
            reason=("missing key '1.bias'", "it holds: 0.bias, 0.weight, 1.weight"),
        ),
        id="weights-missing-key",
    ),
    pytest.param(
        Bad(
            mlp_document(),
            mlp_weights({"9.weight": np.zeros((3, 3), np.float32)}),
            field="weights",
            reason=("unused key(s)", "9.weight"),
        ),
        id="weights-unused-key",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, {"type": "activation", "activation": "tanh"}, LAST),
            {
                "0.weight": mlp_weights()["0.weight"],
                "0.bias": mlp_weights()["0.bias"],
                "1.weight": np.zeros((3, 3), np.float32),
                "2.weight": mlp_weights()["1.weight"],
                "2.bias": mlp_weights()["1.bias"],
            },
            where='layers[1] (activation "1")',
            field="weight",
            reason=("'1.weight'", "not a parameter", "no parameters"),
        ),
        id="weights-key-for-activation-layer",
    ),
    pytest.param(
        Bad(
            mlp_document(),
            mlp_weights({"0.weight": _with_value(mlp_weights()["0.weight"], (1, 2), np.nan)}),
            where='layers[0] (dense "0")',
            field="weight",
            reason=("non-finite", "(1, 2)"),
        ),
        id="weights-nan",
    ),
    pytest.param(
        Bad(
            mlp_document(),
            mlp_weights({"1.bias": np.array([0.0, np.inf], np.float32)}),
            where='layers[1] (dense "1")',
            field="bias",
            reason=("non-finite", "(1,)"),
        ),
        id="weights-inf",
    ),
    pytest.param(
        Bad(
            mlp_document(),
            mlp_weights(
                {
                    "0.weight": _with_value(
                        mlp_weights()["0.weight"].astype(np.float64), (0, 0), 1e300
                    )
                }
            ),
            where='layers[0] (dense "0")',
            field="weight",
            reason=("non-finite", "beyond float32", "(0, 0)"),
        ),
        id="weights-float64-beyond-float32",
    ),
    pytest.param(
        Bad(
            mlp_document(),
            mlp_weights({"0.weight": np.ones((4, 3), np.int32)}),
            where='layers[0] (dense "0")',
            field="weight",
            reason=("dtype int32", "expected floating point"),
        ),
        id="weights-integer-dtype",
    ),
    pytest.param(
        Bad(
            with_layers({"type": "batchnorm"}, FIRST, LAST),
            {
                "0.scale": np.ones(4, np.float32),
                "0.bias": np.zeros(4, np.float32),
                "0.mean": np.zeros(4, np.float32),
                "0.var": np.array([1.0, -1.0, 1.0, 1.0], np.float32),
                "1.weight": mlp_weights()["0.weight"],
                "1.bias": mlp_weights()["0.bias"],
                "2.weight": mlp_weights()["1.weight"],
                "2.bias": mlp_weights()["1.bias"],
            },
            where='layers[0] (batchnorm "0")',
            field="var",
            reason=("negative variance",),
        ),
        id="batchnorm-negative-variance",
    ),
    # --- not a spec at all ----------------------------------------------------------------
    pytest.param(
        Bad(text=bytes(range(256)) * 4, reason=("not a text file",)),
        id="binary-garbage",
    ),
    pytest.param(
        Bad(text="layers: [\n", reason=("not valid YAML", "line 2")),
        id="yaml-unbalanced-bracket",
    ),
    pytest.param(
        Bad(text="name: tiny\nlayers:\n\t- a\n", reason=("not valid YAML", "line 3")),
        id="yaml-tab-indent",
    ),
    pytest.param(
        Bad(text="- name: tiny\n- layers: []\n", reason=("expected a mapping", "a list")),
        id="yaml-top-level-list",
    ),
    pytest.param(
        Bad(text="", reason=("expected a mapping", "empty file")),
        id="empty-file",
    ),
    pytest.param(
        Bad(text='{"name": "tiny",', file_name="spec.json", reason=("not valid JSON", "line 1")),
        id="json-syntax-error",
    ),
    pytest.param(
        Bad(
            text='{"name": "tiny", "input": {"shape": [4]},'
            ' "layers": [{"type": "dense", "units": 3, "units": 4}]}',
            file_name="spec.json",
            reason=("'units'", "twice"),
        ),
        # The YAML loader refuses a key given twice; JSON must not silently keep the last one.
        id="json-duplicate-key",
    ),
    pytest.param(
        Bad(
            text=(
                "name: tiny\n"
                "input: {shape: [4]}\n"
                "layers:\n"
                "  - type: dense\n"
                "    units: 3\n"
                "    units: 4\n"
            ),
            reason=("not valid YAML", "line 6", "key 'units' appears twice"),
        ),
        id="yaml-duplicate-key",
    ),
    # --- whole-network checks -----------------------------------------------------------
    pytest.param(
        Bad(
            with_layers({**FIRST, "name": "h"}, {**LAST, "name": "h"}),
            where='layers[1] (dense "h")',
            field="name",
            reason=("'h' is already the name of layers[0]",),
        ),
        id="duplicate-layer-names",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, {**LAST, "name": "0"}),
            where='layers[1] (dense "0")',
            field="name",
            reason=("'0' is already the name of layers[0]", "by their position"),
        ),
        id="layer-name-clashes-with-position",
    ),
    pytest.param(
        Bad(mlp_document(expose=["nope"]), field="expose[0]", reason=("no layer named 'nope'",)),
        id="expose-unknown-layer",
    ),
    pytest.param(
        Bad(mlp_document(expose=["1"]), field="expose[0]", reason=("last layer",)),
        id="expose-last-layer",
    ),
    pytest.param(
        Bad(mlp_document(opset=5), field="opset", reason=("must be between 17 and", "got 5")),
        id="opset-too-old",
    ),
    pytest.param(
        Bad(mlp_document(opset=999), field="opset", reason=("must be between 17 and", "got 999")),
        id="opset-too-new",
    ),
    pytest.param(
        Bad(
            with_layers(FIRST, {"type": "dropout", "rate": 1.0}, LAST),
            where='layers[1] (dropout "1")',
            field="rate",
            reason=("less than 1", "got 1.0"),
        ),
        id="dropout-rate-one",
    ),
    pytest.param(
        Bad(
            with_layers({"type": "normalize", "mean": [0.0, 0.0, 0.0], "std": 1.0}, LAST),
            where='layers[0] (normalize "0")',
            field="mean",
            reason=("has 3 values", "expected one number or 4"),
        ),
        id="normalize-mean-wrong-length",
    ),
    pytest.param(
        Bad(
            with_layers({"type": "normalize", "mean": 0.0, "std": 0.0}, LAST),
            where='layers[0] (normalize "0")',
            field="std",
            reason=("must be greater than 0",),
        ),
        id="normalize-std-zero",
    ),
    pytest.param(
        Bad(
            with_layers({"type": "normalize", "mean": 0.0, "std": [1.0, 1.0, 0.0, 1.0]}, LAST),
            where='layers[0] (normalize "0")',
            field="std",
            reason=("must be greater than 0",),
        ),
        id="normalize-std-list-with-zero",
    ),
    pytest.param(
        Bad(
            text=(
                "name: tiny\n"
                "input: {shape: [2]}\n"
                "layers:\n"
                "  - {type: normalize, mean: [0.0, .nan]}\n"
                "  - {type: dense, units: 2}\n"
            ),
            where='layers[0] (normalize "0")',
            field="mean",
            reason=("finite",),
        ),
        id="normalize-mean-list-with-nan",
    ),
    # --- input ----------------------------------------------------------------------------
    pytest.param(
        Bad(mlp_document(input={"shape": []}), field="input.shape", reason=("at least 1",)),
        id="input-shape-empty",
    ),
    pytest.param(
        Bad(
            mlp_document(input={"shape": [0]}),
            field="input.shape[0]",
            reason=("must be greater than 0", "got 0"),
        ),
        id="input-shape-zero",
    ),
    pytest.param(
        Bad(
            mlp_document(input={"shape": [4], "dtype": "float64"}),
            field="input.dtype",
            reason=("'float32'", "got 'float64'"),
        ),
        id="input-dtype-float64",
    ),
    # --- variants -------------------------------------------------------------------------
    pytest.param(
        Bad(
            mlp_document(variants=["fp32", "fp8"]),
            field="variants[1]",
            reason=("int8-dynamic", "got 'fp8'"),
        ),
        id="variant-unknown-name",
    ),
    pytest.param(
        Bad(
            mlp_document(variants=["fp32", "fp32"]),
            field="variants",
            reason=("twice",),
            absent=("got {",),  # the whole document must not be dumped into the message
        ),
        id="variant-listed-twice",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(
    case: Bad,
    tmp_path: Path,
    write_spec: Callable[..., Path],
    run_cli: Callable[..., CliResult],
) -> None:
    spec = write_bad(case, tmp_path, write_spec)
    repository = tmp_path / "repo"
    result = run_cli("build", spec, "--repository", repository, *case.args)
    assert_one_line_error(result, spec, case.where, case.field, case.reason, case.absent)
    assert_nothing_written(repository)


def test_spec_file_that_does_not_exist(tmp_path: Path, run_cli: Callable[..., CliResult]) -> None:
    spec = tmp_path / "nowhere" / "spec.yaml"
    repository = tmp_path / "repo"
    result = run_cli("build", spec, "--repository", repository)
    assert_one_line_error(result, spec, reason=("file not found",))
    assert_nothing_written(repository)


def test_good_spec_is_not_written_when_a_later_spec_is_bad(
    tmp_path: Path, write_spec: Callable[..., Path], run_cli: Callable[..., CliResult]
) -> None:
    good = write_spec(mlp_document(name="good"))
    bad = write_spec(with_layers(FIRST, hidden(units=-4), name="bad"))
    repository = tmp_path / "repo"
    result = run_cli("build", good, bad, "--repository", repository)
    assert_one_line_error(result, bad, HIDDEN, "units", ("got -4",))
    assert str(good) not in result.err
    assert_nothing_written(repository)


def test_good_spec_is_not_written_when_a_later_spec_has_bad_calibration_rows(
    tmp_path: Path, write_spec: Callable[..., Path], run_cli: Callable[..., CliResult]
) -> None:
    # The second spec is valid; its calibration file fails only when its variants are made.
    good = write_spec(mlp_document(name="good"))
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((20, 5), np.float32))  # the model takes 4 features
    later = write_spec(
        mlp_document(
            name="later", variants=["fp32", "int8-static"], quantization={"calibration": str(rows)}
        )
    )
    repository = tmp_path / "repo"
    result = run_cli("build", good, later, "--repository", repository)
    assert_one_line_error(result, rows, reason=("shape (20, 5) does not fit", "expected (N, 4)"))
    assert_nothing_written(repository)


def test_two_specs_with_the_same_model_name(
    tmp_path: Path, write_spec: Callable[..., Path], run_cli: Callable[..., CliResult]
) -> None:
    first = write_spec(mlp_document(name="same"))
    second = write_spec(mlp_document(name="same"))
    repository = tmp_path / "repo"
    result = run_cli("build", first, second, "--repository", repository)
    assert_one_line_error(result, second, field="name", reason=("'same'", str(first)))
    assert_nothing_written(repository)


def test_failed_build_leaves_an_existing_repository_untouched(
    tmp_path: Path, write_spec: Callable[..., Path], run_cli: Callable[..., CliResult]
) -> None:
    repository = tmp_path / "repo"
    good = write_spec(mlp_document(name="good"))
    assert run_cli("build", good, "--repository", repository).code == 0
    before = files_under(repository)
    assert any(path.name == "model.onnx" for path in before)

    # Change the good spec (its file would be rewritten) and add a bad one after it.
    text = good.read_text()
    assert "units: 3" in text
    good.write_text(text.replace("units: 3", "units: 5"))
    bad = write_spec(mlp_document(name="bad"), mlp_weights({"0.weight": None}))
    result = run_cli("build", good, bad, "--repository", repository)
    assert_one_line_error(
        result, bad, 'layers[0] (dense "0")', "weight", ("missing key '0.weight'",)
    )
    assert files_under(repository) == before


def test_bad_spec_found_in_the_repository(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    """With no SPEC argument, specs are found as <repository>/<name>/spec.yaml."""
    repository = tmp_path / "repo"
    spec = repository / "tiny" / "spec.yaml"
    spec.parent.mkdir(parents=True)
    spec.write_text(
        "name: tiny\ninput: {shape: [4]}\nlayers:\n  - {type: dense, name: hidden, units: 0}\n"
    )
    before = files_under(repository)
    result = run_cli("build", "--repository", repository)
    assert_one_line_error(
        result, spec, 'layers[0] (dense "hidden")', "units", ("must be greater than 0",)
    )
    assert files_under(repository) == before
