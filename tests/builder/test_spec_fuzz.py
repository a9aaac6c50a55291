"""Fuzzing the spec loader: any file gives a valid model or one clear error line.

Random YAML-shaped documents, valid specs with keys deleted, values replaced by random
ones, random keys and random layer lists added, and plain random text and bytes, are
written to a file and loaded with ``builder.load_spec``. The only acceptable outcomes:
a ``Spec`` that ``builder.build`` turns into a model passing ``onnx.checker``, or a
``SpecError`` whose message is one line starting with the file's path. Any other
exception is a bug (a traceback for the user). A few go through the command line too:
exit code 0 or 2, one line on stderr, never a traceback.

Integers are drawn small (-3..12) or astronomically large (>= 2**40): a shape or a unit
count in between would make a real multi-gigabyte allocation rather than a quick error.
Hypothesis runs with its normal randomness and a small fixed budget per test.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from onnxforge.builder import SpecError, build, load_spec
from onnxforge.builder.schema import LAYER_TYPES
from tests.conftest import CliResult
from tests.helpers import mlp_document

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TOP_KEYS = (
    "name",
    "description",
    "input",
    "output",
    "expose",
    "opset",
    "seed",
    "weights",
    "weight_layout",
    "layers",
    "variants",
    "budget",
    "quantization",
    "serving",
)
NESTED_KEYS = (
    "shape",
    "dtype",
    "distribution",
    "allow_non_finite",
    "normal",
    "uniform",
    "low",
    "high",
    "type",
    "units",
    "activation",
    "init",
    "use_bias",
    "epsilon",
    "affine",
    "rate",
    "mean",
    "std",
    "alpha",
    "beta",
    "gamma",
    "approximate",
    "max_abs",
    "mean_abs",
    "cosine",
    "argmax_agreement",
    "max_batch_size",
    "max_queue_delay_us",
    "instances",
    "calibration",
    "method",
    "per_channel",
    "reduce_range",
    "fp32",
    "fp16",
    "int8-dynamic",
    "int8-static",
)
WORDS = (
    *LAYER_TYPES,
    "relu",
    "softmax",
    "gelu",
    "tanh",
    "leaky_relu",
    "identity",
    "x",
    "y",
    "hidden",
    "0",
    "1",
    "",
    "fp32",
    "fp16",
    "int8-dynamic",
    "int8-static",
    "in_out",
    "out_in",
    "float32",
    "he_normal",
    "zeros",
    "minmax",
    "weights.npz",
)

small_ints = st.integers(-3, 12)
huge_ints = st.sampled_from([2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63)])
ints = small_ints | huge_ints
floats = st.floats() | st.sampled_from([0.0, -0.0, 1e-5, 0.5, 1.0, 1e300, 3.5e38])
words = st.sampled_from(WORDS) | st.text(max_size=16)
scalars = st.none() | st.booleans() | ints | floats | words
keys = st.sampled_from(TOP_KEYS + NESTED_KEYS) | st.text(max_size=10) | small_ints
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=16,
)


# ------------------------------------------------------------------ valid documents


@st.composite
def layers(draw: st.DrawFn) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for index in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(LAYER_TYPES))
        layer: dict[str, Any] = {"type": kind}
        if kind == "dense":
            layer["units"] = draw(st.integers(1, 6))
            layer["activation"] = draw(
                st.sampled_from(["relu", "softmax", "tanh", {"name": "leaky_relu", "alpha": 0.1}])
            )
        elif kind == "activation":
            layer["activation"] = draw(st.sampled_from(["relu", "sigmoid", "gelu", "selu"]))
        elif kind == "dropout":
            layer["rate"] = draw(st.sampled_from([0.0, 0.1, 0.5]))
        elif kind == "normalize":
            layer["mean"], layer["std"] = draw(st.sampled_from([0.0, 0.5])), 2.0
        elif kind in ("batchnorm", "layernorm"):
            layer["epsilon"] = 1e-3
        if draw(st.booleans()):
            layer["name"] = f"l{index}"
        result.append(layer)
    return result


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": draw(st.sampled_from(["tiny", "m-1", "a_b"])),
        "input": {"name": "x", "shape": draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))},
        "output": {"name": "y"},
        "layers": draw(layers()),
    }
    optional = {
        "description": st.text(max_size=20),
        "opset": st.sampled_from([17, 18, 20]),
        "seed": st.integers(0, 2**40),
        "weight_layout": st.sampled_from(["in_out", "out_in"]),
        "variants": st.just(["fp32", "fp16"]),
        "budget": st.just({"fp16": {"max_abs": 0.1}}),
        "serving": st.just({"max_batch_size": 8, "max_queue_delay_us": 100, "instances": 1}),
        "quantization": st.just({"method": "minmax", "per_channel": False}),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            document[key] = draw(strategy)
    if draw(st.booleans()):
        document["input"]["distribution"] = {"uniform": {"low": 0.0, "high": 1.0}}
    named = [layer["name"] for layer in document["layers"][:-1] if "name" in layer]
    if named and draw(st.booleans()):
        document["expose"] = [draw(st.sampled_from(named))]
    return document


# ---------------------------------------------------------------------- mutations


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys and list indices)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


@st.composite
def random_layers(draw: st.DrawFn) -> list[Any]:
    """Layer lists with real types and field names but random values (or random items)."""
    layer = st.fixed_dictionaries(
        {"type": st.sampled_from(LAYER_TYPES) | words},
        optional={key: values for key in ("name", "units", "activation", "rate", "mean", "std")},
    )
    return draw(st.lists(layer | values, max_size=5))


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[Any, list[str]]:
    document: Any = draw(valid_documents())
    done = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(document)))
        kind = draw(
            st.sampled_from(["delete", "replace", "number", "add_key", "layers", "duplicate"])
        )
        parent = _at(document, path[:-1]) if path else None
        target = _at(document, path)
        if kind == "delete" and path:
            del parent[path[-1]]
        elif kind == "replace":
            if path:
                parent[path[-1]] = draw(values)
            else:
                document = draw(values)
        elif kind == "number" and path:
            parent[path[-1]] = draw(ints | floats)
        elif kind == "add_key" and isinstance(target, dict):
            target[draw(keys)] = draw(values)
        elif kind == "layers" and isinstance(document, dict):
            document["layers"] = draw(random_layers())
        elif kind == "duplicate" and isinstance(target, list) and target:
            target.append(json.loads(json.dumps(target[draw(st.integers(0, len(target) - 1))])))
        done.append(f"{kind} {path}")
    return document, done


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """A valid spec's YAML with characters inserted, deleted or lines repeated."""
    text = yaml.safe_dump(draw(valid_documents()), sort_keys=False)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "truncate", "repeat_line"]))
        if kind == "insert":
            text = (
                text[:at]
                + draw(st.text(":-[]{},&*!|>'\"#%@` \n\t?0123456789.e", max_size=4))
                + text[at:]
            )
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 10)) :]
        elif kind == "truncate":
            text = text[:at]
        else:
            lines = text.splitlines(keepends=True)
            if lines:
                line = draw(st.sampled_from(lines))
                text += line
    return text


# ------------------------------------------------------------------------ checking


def write(folder: Path, content: Any, suffix: str) -> Path:
    path = folder / f"spec{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(content), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return path


def note(what: str) -> None:
    """Count outcomes for --hypothesis-show-statistics (outside Hypothesis: nothing)."""
    if currently_in_test_context():
        event(what)


def outcome(path: Path) -> str:
    """'valid' or 'error'; anything but a SpecError (or a model the checker refuses) raises."""
    try:
        spec = load_spec(path)
    except SpecError as error:
        message = str(error)
        assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        assert message.startswith(f"{path}: "), f"does not start with the path: {message!r}"
        note("SpecError")
        return "error"
    onnx.checker.check_model(build(spec))
    note("valid model")
    return "valid"


def check(content: Any, suffix: str = ".yaml") -> str:
    with tempfile.TemporaryDirectory() as folder:
        return outcome(write(Path(folder), content, suffix))


# --------------------------------------------------------------------------- tests


@settings(FUZZ, max_examples=25)
@given(document=valid_documents())
def test_the_valid_documents_build(document: dict[str, Any]) -> None:
    """The base the mutations start from is valid: mutations start from real specs."""
    assert check(document) == "valid"


@settings(FUZZ, max_examples=200)
@given(
    document=st.dictionaries(st.sampled_from(TOP_KEYS) | keys, values, max_size=8) | values,
    suffix=st.sampled_from([".yaml", ".yml", ".json"]),
)
def test_random_documents(document: Any, suffix: str) -> None:
    check(document, suffix)


@settings(FUZZ, max_examples=300)
@given(mutated=mutated_documents(), suffix=st.sampled_from([".yaml", ".json"]))
def test_mutated_valid_documents(mutated: tuple[Any, list[str]], suffix: str) -> None:
    document, _ = mutated
    check(document, suffix)


@settings(FUZZ, max_examples=150)
@given(
    content=st.text(max_size=200) | st.binary(max_size=200) | mutated_text(),
    suffix=st.sampled_from([".yaml", ".json"]),
)
def test_random_text_and_bytes(content: str | bytes, suffix: str) -> None:
    check(content, suffix)


# Small inputs that escaped as something else than a one-line SpecError when this fuzzing
# was written (the exception each raised is in its name); kept as regression cases.
HARD_CASES: dict[str, tuple[Any, str]] = {
    "deeply nested YAML (RecursionError)": ("[" * 2000 + "]" * 2000, ".yaml"),
    "deeply nested JSON (RecursionError)": ("[" * 2000 + "]" * 2000, ".json"),
    "YAML complex mapping key (TypeError)": ("? [a]\n: 1\n", ".yaml"),
    "YAML escape beyond U+10FFFF (ValueError)": ('description: "\\U00110000"\n', ".yaml"),
    "integer of 5000 digits in YAML (ValueError)": ("seed: " + "9" * 5000 + "\n", ".yaml"),
    "integer of 5000 digits in JSON (ValueError)": ('{"seed": ' + "9" * 5000 + "}", ".json"),
    "weights path too long (OSError)": (mlp_document(weights="w" * 300), ".yaml"),
    "dense units 2**40 (MemoryError)": (
        mlp_document(layers=[{"type": "dense", "units": 2**40}]),
        ".yaml",
    ),
    "dense units 2**64 (ValueError)": (
        mlp_document(layers=[{"type": "dense", "units": 2**64}]),
        ".yaml",
    ),
    "normalize over 2**40 features (MemoryError)": (
        mlp_document(input={"shape": [2**40]}, layers=[{"type": "normalize"}]),
        ".yaml",
    ),
    "batchnorm over 2**40 channels (MemoryError)": (
        mlp_document(input={"shape": [2**40]}, layers=[{"type": "batchnorm"}]),
        ".yaml",
    ),
    "flatten of [2**40, 2**40] (ValueError in build)": (
        mlp_document(input={"shape": [2**40, 2**40]}, layers=[{"type": "flatten"}]),
        ".yaml",
    ),
    "input dim 2**63 (ValueError in build)": (
        mlp_document(
            input={"shape": [2**63]}, layers=[{"type": "activation", "activation": "relu"}]
        ),
        ".yaml",
    ),
    "output named like the input (InferenceError in build)": (
        mlp_document(output={"name": "x"}),
        ".yaml",
    ),
    "newline in an unknown key (two-line message)": ({**mlp_document(), "a\nb": 1}, ".yaml"),
    "newline in a layer type (two-line message)": (
        mlp_document(layers=[{"type": "den\nse"}]),
        ".yaml",
    ),
    "newline in an activation name (two-line message)": (
        mlp_document(layers=[{"type": "dense", "units": 1, "activation": "re\nlu"}]),
        ".yaml",
    ),
}


@pytest.mark.parametrize("content, suffix", HARD_CASES.values(), ids=HARD_CASES.keys())
def test_hard_cases(content: Any, suffix: str) -> None:
    check(content, suffix)


def check_cli(run_cli: Callable[..., CliResult], content: Any, suffix: str) -> None:
    """``onnxforge build``: exit 0, or exit 2 with one line on stderr; never a traceback."""
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), content, suffix)
        repository = Path(folder) / "repo"
        try:
            result = run_cli("build", path, "--repository", repository, "--variants", "fp32")
        except Exception as error:  # escaped main(): the user would see a traceback
            raise AssertionError(
                f"onnxforge build raised {type(error).__name__}: {error}"
            ) from error
    assert result.code in (0, 2), result
    assert "Traceback" not in result.err + result.out
    if result.code == 2:
        assert len(result.err.splitlines()) == 1, result.err
        assert result.err.startswith(f"onnxforge: error: {path}"), result.err


@settings(FUZZ, max_examples=25)
@given(
    content=mutated_documents().map(lambda mutated: mutated[0]) | values | mutated_text(),
    suffix=st.sampled_from([".yaml", ".json"]),
)
def test_the_command_line_never_shows_a_traceback(
    run_cli: Callable[..., CliResult], content: Any, suffix: str
) -> None:
    check_cli(run_cli, content, suffix)


@pytest.mark.parametrize("content, suffix", HARD_CASES.values(), ids=HARD_CASES.keys())
def test_hard_cases_on_the_command_line(
    run_cli: Callable[..., CliResult], content: Any, suffix: str
) -> None:
    check_cli(run_cli, content, suffix)
