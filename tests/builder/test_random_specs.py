"""Property: any valid spec builds into a checked model that computes what the reference says."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxforge.builder import build, load_spec, reference
from onnxforge.builder.spec import Spec
from tests.builder.cases import activation_variants
from tests.builder.runs import run_onnx

ACTIVATIONS = [activation for _, activation in activation_variants()]


@st.composite
def layer_list(draw: st.DrawFn, rank: int) -> list[dict[str, Any]]:
    layers: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(
            st.sampled_from(
                [
                    "dense",
                    "dense",
                    "activation",
                    "batchnorm",
                    "layernorm",
                    "dropout",
                    "normalize",
                    "flatten",
                ]
            )
        )
        layer: dict[str, Any] = {"type": kind}
        if kind == "dense":
            layer["units"] = draw(st.integers(1, 12))
            layer["activation"] = draw(st.sampled_from(ACTIVATIONS))
            layer["init"] = draw(st.sampled_from(["glorot_uniform", "he_normal", "lecun_normal"]))
            layer["use_bias"] = draw(st.booleans())
        elif kind == "activation":
            layer["activation"] = draw(st.sampled_from(ACTIVATIONS))
        elif kind == "dropout":
            layer["rate"] = draw(st.floats(0, 0.9))
        elif kind == "normalize":
            layer["mean"] = draw(st.floats(-2, 2))
            layer["std"] = draw(st.floats(0.1, 4))
        elif kind in ("batchnorm", "layernorm"):
            layer["epsilon"] = draw(st.sampled_from([1e-5, 1e-3]))
            layer["affine"] = draw(st.booleans())
        if draw(st.booleans()):
            layer["name"] = f"l{len(layers)}"
        layers.append(layer)
    return layers


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=2))
    return {
        "name": "random",
        "seed": draw(st.integers(0, 2**32)),
        "input": {"name": "x", "shape": shape},
        "weight_layout": draw(st.sampled_from(["in_out", "out_in"])),
        "opset": draw(st.sampled_from([17, 18, 20, None])),
        "layers": draw(layer_list(len(shape))),
    }


def _with_random_weights(document: dict[str, Any], folder: Path, seed: int) -> Spec:
    """Re-load the spec with every parameter drawn at random and read from an .npz."""
    initial = load_spec(_write(document, folder / "plain.yaml"))
    rng = np.random.default_rng(seed)
    arrays = {}
    for layer in initial.layers:
        for key, value in layer.params.items():
            if layer.type == "normalize":
                continue  # normalize takes mean/std from the spec itself
            if key in ("scale", "bias") and getattr(layer.config, "affine", True) is False:
                continue  # neutral values the layer fills in itself
            drawn = rng.normal(size=value.shape)
            if key == "var":
                drawn = np.abs(drawn) + 0.1
            arrays[f"{layer.name}.{key}"] = drawn.astype(np.float32)
    np.savez(folder / "weights.npz", **arrays)
    return load_spec(_write({**document, "weights": "weights.npz"}, folder / "spec.yaml"))


def _write(document: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents(), data_seed=st.integers(0, 2**32))
def test_random_spec_builds_and_matches_reference(document: dict[str, Any], data_seed: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        spec = _with_random_weights(document, Path(folder), data_seed)
    model = build(spec)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(data_seed)
    x = rng.normal(size=(5, *spec.input_shape)).astype(np.float32) * 2
    got = run_onnx(spec, x)["output"]
    want = reference.forward(spec, x)
    assert got.shape == want.shape == (5, *spec.output_shape)
    # Chains of random layers amplify float32 rounding; scale the tolerance to the values.
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=1e-4)
