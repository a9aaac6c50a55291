"""Quantized files against the NumPy emulation of their arithmetic (``builder.emulate``).

ONNX Runtime runs each quantized file; the emulation recomputes it from the scales, zero
points and integer weights stored in the file. Two things are compared:

* the **integers** every quantized MatMul consumes (the file's ``QuantizeLinear`` /
  ``DynamicQuantizeLinear`` outputs, added as extra graph outputs of a copy of the file);
* every **graph output** of the unmodified file, as it is served.

What is achievable, measured on the bundled models:

* int8-dynamic: the integers and per-batch scales are identical; ReLU outputs agree bit for
  bit, softmax outputs within 2 float32 ulps (ONNX Runtime's ``exp`` is an approximation).
* int8-static: ONNX Runtime fuses ``DQ -> MatMul -> Add -> [Relu] -> Q`` into ``QGemm``,
  which rounds the bias to int32 at scale ``x_scale * w_scale`` and requantizes with the
  multiplier ``x_scale * w_scale / y_scale``: not the file's float ops. A value within that
  rounding of a half step lands one step away (up to 26 in 100,000 activations). A product
  not requantized runs as a float32 ``Gemm`` on dequantized values, a few ulps off the exact
  integer product. Rows whose integers all agree match within 6 float32 ulps of the output's
  scale.

So: where a row's integers first differ, they differ by one step; rows without a difference
agree within ``TIGHT``; rows with one differ by that step's effect downstream and are held
only to the emulation's own distance from fp32. And the emulation is far closer to ONNX
Runtime than to fp32: that shows it emulates the quantization rather than fp32.

Random specs add float32 activations (tanh, gelu, ...) whose ONNX Runtime approximations
are a few ulps from the reference's; where such a value sits on a rounding boundary, the next
quantizer flips by one step, so random specs bound the step, not the count.

u8 x s8 products: ONNX Runtime's AVX2 kernels without VNNI sum pairs of products in int16
with saturation (``VPMADDUBSW``), so with 8-bit weights (``reduce_range`` off) their integers
may differ from exact arithmetic. Those cases run only on CPUs with VNNI (or not x86).
"""

from __future__ import annotations

import ast
import functools
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxforge.builder import build, emulate, load_spec, reference, runtime
from onnxforge.builder.quantize import QuantizeOptions, quantize
from onnxforge.builder.samples import sample_inputs
from onnxforge.builder.spec import Spec
from tests.conftest import MODELS

# A row whose integers all agree: |ORT - emulation| <= TIGHT * (|emulation| + output scale),
# where the output scale is max(1, max |emulation|) of that output.
TIGHT = 1.5e-6
MAX_FLIP_FRACTION = 2e-3  # quantized activations one step apart (int8-static's QGemm)
CALIBRATION_ROWS = 512


def _has_vnni() -> bool:
    """Whether ONNX Runtime's u8 x s8 kernels sum products exactly (no int16 pair sums)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True  # the VPMADDUBSW saturation is an x86 (AVX2, AVX-512 without VNNI) matter
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


EXACT_8BIT_PRODUCTS = _has_vnni()


@functools.cache
def _bundled(name: str) -> tuple[Spec, onnx.ModelProto]:
    spec = load_spec(MODELS / name / "spec.yaml")
    return spec, build(spec)


def _session_outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    session = runtime.session(model.SerializeToString())
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _traced(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose quantizing nodes' outputs are graph outputs too."""
    traced = onnx.ModelProto()
    traced.CopyFrom(model)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            kinds = [initializers[node.input[2]].data_type]
        elif node.op_type == "DynamicQuantizeLinear":
            kinds = [TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8]
        else:
            continue
        for name, kind in zip(node.output, kinds, strict=True):
            traced.graph.output.append(helper.make_tensor_value_info(name, kind, None))
    return traced


@dataclass
class Comparison:
    """ONNX Runtime, the emulation and the fp32 reference on one batch."""

    ort: dict[str, np.ndarray]
    emulated: dict[str, np.ndarray]
    fp32: dict[str, np.ndarray]
    diverged: np.ndarray  # rows where some quantized activation differs
    flips: int  # elements that differ where their row had not diverged upstream
    activations: int  # quantized activation elements in all
    max_step: int  # the largest such difference, in quantization steps
    same_batch_scales: bool  # int8-dynamic: scales and zero points bit for bit

    def scale(self, name: str) -> float:
        return max(1.0, float(np.abs(self.emulated[name]).max()))

    def worst_tight(self, name: str) -> float:
        """max |ORT - emulation| / (|emulation| + output scale) over rows that agree."""
        got, want = self.ort[name][~self.diverged], self.emulated[name][~self.diverged]
        if not got.size:
            return 0.0
        diff = np.abs(got.astype(np.float64) - want)
        return float((diff / (np.abs(want) + self.scale(name))).max())

    def distance_to_ort(self, name: str) -> float:
        """max |ORT - emulation| over rows that agree."""
        got, want = self.ort[name][~self.diverged], self.emulated[name][~self.diverged]
        return float(np.abs(got.astype(np.float64) - want).max()) if got.size else 0.0

    def distance_to_fp32(self, name: str) -> float:
        return float(np.abs(self.emulated[name].astype(np.float64) - self.fp32[name]).max())


def compare(spec: Spec, model: onnx.ModelProto, variant: str, x: np.ndarray) -> Comparison:
    feed = {spec.input_name: x}
    ort = _session_outputs(model, feed)
    traced = _session_outputs(_traced(model), feed)
    integers = emulate.quantized_activations(spec, x, variant, model)
    assert integers, "the file quantizes nothing"
    diverged = np.zeros(len(x), dtype=bool)
    flips = total = max_step = 0
    same_batch_scales = True
    for name, want in integers.items():  # in the order the layers run
        got = np.asarray(traced[name])
        assert got.shape == want.shape, name
        if want.ndim == 0:  # a dynamic scale or zero point, computed from the whole batch
            # An ulp off when an activation before it is (ORT's tanh is not float64's): the
            # integers show whether that mattered; the rescale moves by an ulp.
            if want.dtype == np.float32:
                np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
            else:
                assert abs(int(got) - int(want)) <= 1, name
            same_batch_scales &= bool(got == want)
            continue
        diff = np.abs(got.astype(np.int64) - want).reshape(len(x), -1)
        fresh = diff[~diverged]  # rows whose inputs to this quantizer agreed so far
        if fresh.size:
            max_step = max(max_step, int(fresh.max()))
        flips += int((fresh != 0).sum())
        total += diff.size
        diverged |= (diff != 0).any(axis=1)
    emulated = emulate.forward_quantized(spec, x, variant, model)
    return Comparison(
        {name: ort[name] for name in spec.output_names},
        emulated,
        reference.run(spec, x),
        diverged,
        flips,
        total,
        max_step,
        same_batch_scales,
    )


def assert_emulates(
    result: Comparison, max_flip_fraction: float | None, min_ratio: float = 100.0
) -> None:
    """What every quantized file shows against its emulation.

    A quantized activation first differs by one step at most (a later one may differ more,
    downstream of the first); rows without a difference agree within ``TIGHT``; rows with one
    stay as close to the emulation as fp32 is. ``max_flip_fraction`` bounds the one-step
    differences (None: upstream float differences may cause them systematically). The
    emulation is ``min_ratio`` times closer to ONNX Runtime than to fp32 wherever
    quantization changes the result noticeably.
    """
    assert result.max_step <= 1, f"a quantized activation differs by {result.max_step} steps"
    if max_flip_fraction is not None:
        assert result.flips <= max_flip_fraction * result.activations, (
            f"{result.flips} of {result.activations} quantized activations differ"
        )
    for name, want in result.emulated.items():
        got = result.ort[name]
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape, name
        assert result.worst_tight(name) <= TIGHT, name
        quantization = result.distance_to_fp32(name)
        np.testing.assert_array_less(
            np.abs(got.astype(np.float64) - want), 2 * quantization + 1e-6, err_msg=name
        )
        if quantization > 1e-4 * result.scale(name):
            assert result.distance_to_ort(name) * min_ratio <= quantization, name


def _quantized(
    spec: Spec, model: onnx.ModelProto, variant: str, options: QuantizeOptions
) -> onnx.ModelProto:
    calibration = sample_inputs(spec, CALIBRATION_ROWS, 1) if variant == "int8-static" else None
    return quantize(model, variant, calibration, options)


def _exactness(options: QuantizeOptions) -> None:
    if not options.reduce_range and not EXACT_8BIT_PRODUCTS:
        pytest.skip("8-bit weights on an x86 CPU without VNNI: u8*s8 pair sums may saturate")


STATIC_OPTIONS = [
    QuantizeOptions(method, per_channel, reduce_range)
    for method in ("minmax", "entropy", "percentile")
    for per_channel in (False, True)
    for reduce_range in (False, True)
]
DYNAMIC_OPTIONS = [
    QuantizeOptions("minmax", per_channel, reduce_range)
    for per_channel in (False, True)
    for reduce_range in (False, True)
]
CASES = [("int8-dynamic", options) for options in DYNAMIC_OPTIONS] + [
    ("int8-static", options) for options in STATIC_OPTIONS
]


def _case_id(case: tuple[str, QuantizeOptions]) -> str:
    variant, options = case
    parts = [variant.removeprefix("int8-")]
    if variant == "int8-static":
        parts.append(options.method)
    parts.append("channel" if options.per_channel else "tensor")
    parts.append("7bit" if options.reduce_range else "8bit")
    return "-".join(parts)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_digits_quantized_file_computes_the_emulation(case: tuple[str, QuantizeOptions]) -> None:
    variant, options = case
    _exactness(options)
    spec, model = _bundled("digits-mlp")
    quantized = _quantized(spec, model, variant, options)
    result = compare(spec, quantized, variant, sample_inputs(spec, 2000, 2))
    exact = variant == "int8-dynamic"
    assert_emulates(result, 0.0 if exact else MAX_FLIP_FRACTION, min_ratio=1000)
    if variant == "int8-dynamic":  # ReLU features: the same integers, the same float32 ops
        assert result.same_batch_scales
        np.testing.assert_array_equal(result.ort["hidden"], result.emulated["hidden"])


WIDE_CASES = [
    ("int8-dynamic", QuantizeOptions("minmax", False, False)),
    ("int8-dynamic", QuantizeOptions("minmax", True, True)),
    ("int8-static", QuantizeOptions("minmax", False, True)),
    ("int8-static", QuantizeOptions("entropy", True, False)),
    ("int8-static", QuantizeOptions("percentile", True, True)),
]


@pytest.mark.parametrize("case", WIDE_CASES, ids=[_case_id(case) for case in WIDE_CASES])
def test_wide_quantized_file_computes_the_emulation(case: tuple[str, QuantizeOptions]) -> None:
    variant, options = case
    _exactness(options)
    spec, model = _bundled("wide-mlp")
    quantized = _quantized(spec, model, variant, options)
    result = compare(spec, quantized, variant, sample_inputs(spec, 200, 2))
    exact = variant == "int8-dynamic"
    assert_emulates(result, 0.0 if exact else MAX_FLIP_FRACTION, min_ratio=1000)


ACTIVATIONS = [
    "relu",
    "identity",
    "tanh",
    "sigmoid",
    "softmax",
    "gelu",
    {"name": "leaky_relu", "alpha": 0.1},
    "elu",
    "silu",
    "softplus",
]


@st.composite
def quantizable_documents(draw: st.DrawFn) -> dict[str, Any]:
    """1-3 dense layers, each after an optional normalisation, dropout or activation."""
    layers: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        before = draw(st.sampled_from([None, "batchnorm", "layernorm", "normalize", "dropout"]))
        if before == "normalize":
            layers.append({"type": "normalize", "mean": 0.5, "std": 2.0})
        elif before is not None:
            layers.append({"type": before})
        layers.append(
            {
                "type": "dense",
                "units": draw(st.integers(1, 16)),
                "activation": draw(st.sampled_from(ACTIVATIONS)),
                "use_bias": draw(st.booleans()),
            }
        )
    features = draw(st.integers(1, 12))
    shape = [features] if draw(st.integers(0, 3)) else [draw(st.integers(1, 3)), features]
    if shape[0] != features and any(layer["type"] == "batchnorm" for layer in layers):
        shape = [features]  # batchnorm normalises axis 1: keep it simple, one feature axis
    return {
        "name": "random-quantized",
        "input": {"name": "x", "shape": shape},
        "output": {"name": "y"},
        "weight_layout": draw(st.sampled_from(["in_out", "out_in"])),
        "layers": layers,
    }


def _random_spec(document: dict[str, Any], seed: int) -> Spec:
    """``document`` with every parameter drawn at random, read from a weights file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(yaml.safe_dump(document))
        plain = load_spec(path)
        rng = np.random.default_rng(seed)
        weights = {}
        for layer in plain.layers:
            for key, value in layer.params.items() if layer.type != "normalize" else ():
                drawn = rng.normal(size=value.shape)
                if key == "weight":  # unit variance in, unit variance out: few saturated units
                    drawn /= np.sqrt(layer.input_shape[-1])
                elif key == "var":
                    drawn = np.abs(drawn) + 0.5
                weights[f"{layer.name}.{key}"] = drawn.astype(np.float32)
        np.savez(Path(folder) / "weights.npz", **weights)
        path.write_text(yaml.safe_dump({**document, "weights": "weights.npz"}))
        return load_spec(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=quantizable_documents(),
    seed=st.integers(0, 2**32 - 1),
    variant=st.sampled_from(["int8-dynamic", "int8-static"]),
    options=st.sampled_from(STATIC_OPTIONS),
)
def test_random_quantized_specs_compute_the_emulation(
    document: dict[str, Any], seed: int, variant: str, options: QuantizeOptions
) -> None:
    spec = _random_spec(document, seed)
    if not options.reduce_range and not EXACT_8BIT_PRODUCTS:
        options = QuantizeOptions(options.method, options.per_channel, reduce_range=True)
    quantized = _quantized(spec, build(spec), variant, options)
    x = np.random.default_rng(seed).normal(size=(300, *spec.input_shape)).astype(np.float32)
    result = compare(spec, quantized, variant, x)
    assert_emulates(result, None)


# A dense layer small enough to compute by hand. Per-tensor weight scale: max|w| / 127 = 1/64,
# so w * 64 = [[127, -1], [1.5, -64], [2.5, 32]] -> [[127, -1], [2, -64], [2, 32]] (half to even).
HAND_WEIGHTS = {
    "0.weight": np.array([[127 / 64, -1 / 64], [3 / 128, -1.0], [5 / 128, 0.5]], np.float32),
    "0.bias": np.array([0.25, -0.5], np.float32),
}
HAND_QUANTIZED_WEIGHT = [[127, -1], [2, -64], [2, 32]]
# Rows on the grid of scale 1/128, zero point 64 (range [-0.5, 191/128]: 255 steps):
# x * 128 = [191, -64, 0] sets the range; [1.5, 2.5, -1.5] and [3.5, 0.5, -2.5] are ties.
HAND_ROWS = np.array(
    [[191 / 128, -0.5, 0.0], [3 / 256, 5 / 256, -3 / 256], [7 / 256, 1 / 256, -5 / 256]],
    np.float32,
)


def _hand_spec(write_spec: Callable[..., Path]) -> Spec:
    document = {
        "name": "hand",
        "input": {"name": "x", "shape": [3]},
        "output": {"name": "y"},
        "layers": [{"type": "dense", "units": 2, "activation": "identity"}],
    }
    return load_spec(write_spec(document, HAND_WEIGHTS))


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _ort(model: onnx.ModelProto, x: np.ndarray, output: str = "y") -> np.ndarray:
    return np.asarray(_session_outputs(model, {"x": x})[output])


def test_hand_computed_dynamic_case(write_spec: Callable[..., Path]) -> None:
    spec = _hand_spec(write_spec)
    quantized = quantize(build(spec), "int8-dynamic")
    np.testing.assert_array_equal(
        _initializer(quantized, "dense_0/weight_quantized"), HAND_QUANTIZED_WEIGHT
    )
    assert _initializer(quantized, "dense_0/weight_scale") == np.float32(1 / 64)
    integers = emulate.quantized_activations(spec, HAND_ROWS, "int8-dynamic", quantized)
    assert integers["x_scale"] == np.float32(1 / 128) and integers["x_zero_point"] == 64
    # 191 + 64; -64 + 64; round(1.5) = 2, round(2.5) = 2, round(-1.5) = -2;
    # round(3.5) = 4, round(0.5) = 0, round(-2.5) = -2: ties go to the even neighbour.
    np.testing.assert_array_equal(
        integers["x_quantized"], [[255, 0, 64], [66, 66, 62], [68, 64, 62]]
    )
    # (xq - 64) @ wq, by hand: [191, -64, 0] -> [191*127 - 64*2, -191 + 64*64], ...
    accumulated = np.array([[24129, 3905], [254, -194], [504, -68]])
    want = (accumulated / 8192 + [0.25, -0.5]).astype(np.float32)  # x 1/128 * 1/64, + bias
    np.testing.assert_array_equal(
        emulate.forward_quantized(spec, HAND_ROWS, "int8-dynamic", quantized)["y"], want
    )
    np.testing.assert_array_equal(_ort(quantized, HAND_ROWS), want)
    assert np.abs(want - reference.forward(spec, HAND_ROWS)).max() > 1e-3  # not fp32


def test_hand_computed_static_case_saturates(write_spec: Callable[..., Path]) -> None:
    spec = _hand_spec(write_spec)
    quantized = quantize(build(spec), "int8-static", HAND_ROWS)  # calibrates [-0.5, 191/128]
    assert _initializer(quantized, "x_scale") == np.float32(1 / 128)
    assert _initializer(quantized, "x_zero_point") == 64
    # 4.0 and -1.0 are outside the calibrated range: 512 + 64 -> 255, -128 + 64 -> 0.
    x = np.concatenate([[[4.0, -1.0, 3 / 256]], HAND_ROWS[1:]]).astype(np.float32)
    integers = emulate.quantized_activations(spec, x, "int8-static", quantized)
    np.testing.assert_array_equal(
        integers["x_QuantizeLinear_Output"], [[255, 0, 66], [66, 66, 62], [68, 64, 62]]
    )
    accumulated = np.array([[24133, 3969], [254, -194], [504, -68]])
    want = (accumulated / 8192 + [0.25, -0.5]).astype(np.float32)
    np.testing.assert_array_equal(emulate.forward(spec, x, "int8-static", quantized), want)
    np.testing.assert_array_equal(_ort(quantized, x), want)
    # fp32 sees the full 4.0 and -1.0: the saturation is worth several units.
    assert np.abs(reference.forward(spec, x)[0] - want[0]).max() > 3


def test_quantize_linear_rounds_half_to_even_and_saturates() -> None:
    steps = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 1000.0, -1000.0])
    x = (steps / 4).astype(np.float32)  # scale 1/4: every value exact
    got = emulate.quantize_linear(x, np.float32(0.25), np.int8(0))
    np.testing.assert_array_equal(got, [0, 2, 2, 0, -2, -2, 126, 127, 127, -128])
    got = emulate.quantize_linear(x, np.float32(0.25), np.uint8(10))
    np.testing.assert_array_equal(got, [10, 12, 12, 10, 8, 8, 136, 138, 255, 0])


def test_dynamic_quantization_matches_onnx_definition() -> None:
    scale, zero = emulate.dynamic_quantization(np.array([[-1.0, 0.5], [2.0, 0.25]], np.float32))
    assert scale == np.float32(3 / 255) and zero == 85  # round(1 / (3/255)) = round(85.0)
    assert emulate.dynamic_quantization(np.zeros((2, 3), np.float32)) == (1.0, 0)
    scale, zero = emulate.dynamic_quantization(np.array([0.5, 2.0], np.float32))
    assert scale == np.float32(2 / 255) and zero == 0  # the range always includes 0


def test_dynamic_results_depend_on_the_batch() -> None:
    """DynamicQuantizeLinear takes one scale for the whole batch: a row's answer changes
    with the rows sent along with it, in ONNX Runtime and in the emulation alike."""
    spec, model = _bundled("digits-mlp")
    quantized = quantize(model, "int8-dynamic")
    x = sample_inputs(spec, 64, 5)
    wider = np.concatenate([x[:1], x[1:] * 3]).astype(np.float32)
    alone = emulate.forward(spec, x[:1], "int8-dynamic", quantized)
    in_batch = emulate.forward(spec, wider, "int8-dynamic", quantized)[:1]
    assert np.abs(alone - in_batch).max() > 1e-4  # far more than ORT and emulation differ
    np.testing.assert_allclose(_ort(quantized, x[:1], "probabilities"), alone, atol=1e-6)
    np.testing.assert_allclose(_ort(quantized, wider, "probabilities")[:1], in_batch, atol=1e-6)


@pytest.mark.parametrize("variant", ["int8-dynamic", "int8-static"])
def test_exposed_tensors_carry_what_the_quantized_file_outputs(variant: str) -> None:
    """A QDQ pair sits on the tensor a MatMul reads: in int8-static, every graph output that
    shares that tensor (the layer before, a dropout, even the input) is dequantized."""
    document = {
        "name": "exposed",
        "input": {"name": "x", "shape": [6]},
        "output": {"name": "y"},
        "expose": ["first", "a", "d"],
        "layers": [
            {"type": "dropout", "name": "first"},
            {"type": "dense", "name": "a", "units": 8, "activation": "relu"},
            {"type": "dropout", "name": "d"},
            {"type": "dense", "units": 3},
        ],
    }
    spec = _random_spec(document, 3)
    quantized = _quantized(spec, build(spec), variant, QuantizeOptions(reduce_range=True))
    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    result = compare(spec, quantized, variant, x)
    assert_emulates(result, None)  # 6 inputs: QGemm's int32 bias flips relatively more here
    np.testing.assert_array_equal(result.emulated["a"], result.emulated["d"])
    if variant == "int8-static":
        scale = _initializer(quantized, "x_scale")
        on_grid = result.emulated["first"] / scale
        np.testing.assert_allclose(on_grid, np.rint(on_grid), atol=1e-3)
        assert not np.array_equal(result.emulated["first"], x)
    else:
        np.testing.assert_array_equal(result.emulated["first"], x)


def test_forward_dispatches_on_the_variant(write_spec: Callable[..., Path]) -> None:
    spec, model = _bundled("digits-mlp")
    x = sample_inputs(spec, 16, 4)
    fp32 = reference.forward(spec, x)
    np.testing.assert_array_equal(emulate.forward(spec, x, "fp32"), fp32)
    assert fp32.tobytes() == reference.layer_outputs(spec, x)[-1].astype(np.float32).tobytes()
    quantized = quantize(model, "int8-dynamic")
    got = emulate.forward(spec, x, variant="int8-dynamic", quantized=quantized)
    want = emulate.forward_quantized(spec, x, "int8-dynamic", quantized)["probabilities"]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.shape == fp32.shape


def test_forward_needs_the_quantized_file() -> None:
    spec, _ = _bundled("digits-mlp")
    x = sample_inputs(spec, 2, 4)
    with pytest.raises(ValueError, match="'int8-static' needs its model: pass quantized="):
        emulate.forward(spec, x, "int8-static")
    with pytest.raises(ValueError, match=r"unknown variant 'int4' \(known: fp32, fp16, int8"):
        emulate.forward(spec, x, "int4")


def test_the_reference_imports_nothing_that_reads_onnx() -> None:
    """The oracle stays independent of what it checks: ``builder.reference`` imports only
    NumPy, the standard library and the spec, and importing it loads no emulation."""
    tree = ast.parse(Path(reference.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    allowed = {"__future__", "math", "collections.abc", "numpy"}
    assert imported <= allowed | {"onnxforge.builder.schema", "onnxforge.builder.spec"}
    code = "import sys, onnxforge.builder.reference; print('\\n'.join(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert "onnxforge.builder.reference" in loaded
    assert "onnxforge.builder.emulate" not in loaded


def test_a_file_of_another_variant_is_refused() -> None:
    spec, model = _bundled("digits-mlp")
    x = sample_inputs(spec, 2, 4)
    dynamic = quantize(model, "int8-dynamic")
    with pytest.raises(ValueError, match=r"should have a MatMul node 'hidden/MatMul', found"):
        emulate.forward_quantized(spec, x, "int8-static", dynamic)
    with pytest.raises(ValueError, match="should have a MatMulInteger node 'hidden/MatMul_quant'"):
        emulate.forward_quantized(spec, x, "int8-dynamic", model)
    with pytest.raises(ValueError, match=r"input must have shape \(batch, 64\), got \(2, 3\)"):
        emulate.forward_quantized(spec, x[:, :3], "int8-dynamic", dynamic)


@pytest.mark.parametrize("name", ["digits-mlp", "wide-mlp"])
def test_fp16_file_within_half_precision_of_the_emulation(name: str) -> None:
    """fp16 is compared loosely: ONNX Runtime's CPU provider has no float16 kernels for these
    operators, so it computes in float32 with the file's float16 parameters and drops the
    float16 casts between them, while the file (and a device with float16 arithmetic)
    rounds every tensor to float16. The two differ by float16 rounding, not by float32 ulps."""
    spec, model = _bundled(name)
    quantized = quantize(model, "fp16")
    x = sample_inputs(spec, 200, 2)
    ort = _session_outputs(quantized, {spec.input_name: x})
    emulated = emulate.forward_quantized(spec, x, "fp16", quantized)
    fp32 = reference.run(spec, x)
    for output, want in emulated.items():
        scale = max(1.0, float(np.abs(want).max()))
        assert want.dtype == np.float32
        np.testing.assert_array_equal(want, want.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(ort[output], want, atol=1e-2 * scale, err_msg=output)
        assert np.abs(want - fp32[output]).max() > 1e-4 * scale  # float16 rounding shows
