"""Trained parameters from other frameworks build into files that compute what they compute.

The oracle here is each framework's own forward pass, not our NumPy reference: a PyTorch
state dict (``weight_layout: out_in``) checked against torch's outputs, scikit-learn
``coefs_`` / ``intercepts_`` (``in_out``) against ``predict_proba`` / ``predict``, and
Keras parameter names against the canonical ones.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from onnxforge.builder import build, load_spec, reference, runtime
from onnxforge.builder.spec import Spec

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "torch_mlp"


def run_ort(spec: Spec, x: np.ndarray) -> np.ndarray:
    """The model output of the built fp32 file, run in ONNX Runtime."""
    session = runtime.session(build(spec).SerializeToString())
    (output,) = session.run([spec.output_name], {spec.input_name: x})
    return output


def max_abs(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def with_opset(spec_path: Path, folder: Path, opset: int | None) -> Path:
    """``spec_path`` unchanged, or a copy (weights alongside) that pins ``opset``."""
    if opset is None:
        return spec_path
    document = yaml.safe_load(spec_path.read_text())
    document["opset"] = opset
    shutil.copy(spec_path.parent / document["weights"], folder / document["weights"])
    copy = folder / spec_path.name
    copy.write_text(yaml.safe_dump(document, sort_keys=False))
    return copy


# --- a. the committed PyTorch fixture (no torch needed) --------------------------------------


def test_torch_fixture_holds_trained_state() -> None:
    """The fixture is a trained model's state dict, bookkeeping included, not init values."""
    with np.load(FIXTURE / "weights.npz") as weights:
        state = dict(weights)
    assert state["1.num_batches_tracked"].dtype == np.int64
    assert int(state["1.num_batches_tracked"]) > 0
    # BatchNorm1d starts at mean 0, var 1; LayerNorm at weight 1, bias 0.
    assert np.abs(state["1.running_mean"]).max() > 0.1
    assert np.abs(state["1.running_var"] - 1).max() > 0.1
    assert np.abs(state["5.weight"] - 1).max() > 0.01
    assert state["0.weight"].shape == (16, 12)  # nn.Linear: (out, in)
    total = sum(path.stat().st_size for path in FIXTURE.iterdir())
    assert total < 50_000


@pytest.mark.parametrize("opset", [None, 17], ids=["newest-opset", "opset17"])
def test_torch_fixture_matches_torch_outputs(opset: int | None, tmp_path: Path) -> None:
    spec = load_spec(with_opset(FIXTURE / "spec.yaml", tmp_path, opset))
    assert spec.weight_layout == "out_in"
    with np.load(FIXTURE / "expected.npz") as expected:
        x, want = expected["x"], expected["y"]
    assert x.dtype == want.dtype == np.float32
    assert x.shape == (64, 12) and want.shape == (64, 4)

    got = run_ort(spec, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))

    ours = reference.forward(spec, x)
    np.testing.assert_allclose(ours, want, atol=1e-5, rtol=0)


# --- b. PyTorch, live ---------------------------------------------------------------------------


def torch_zoo(torch: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Modules of a fresh Sequential, each with the spec layer that mirrors it."""
    nn = torch.nn

    def act(activation: Any) -> dict[str, Any]:
        return {"type": "activation", "activation": activation}

    def dense(units: int) -> dict[str, Any]:
        return {"type": "dense", "units": units}

    return [
        (nn.Linear(10, 24), dense(24)),
        (nn.ELU(alpha=0.7), act({"name": "elu", "alpha": 0.7})),
        (nn.Linear(24, 24), dense(24)),
        (nn.SiLU(), act("silu")),
        (nn.BatchNorm1d(24, eps=1e-3), {"type": "batchnorm", "epsilon": 1e-3}),
        (nn.Linear(24, 20), dense(20)),
        (nn.Mish(), act("mish")),
        (nn.LeakyReLU(0.2), act({"name": "leaky_relu", "alpha": 0.2})),
        (nn.Linear(20, 20), dense(20)),
        (nn.Softplus(), act("softplus")),
        (nn.LayerNorm(20, eps=1e-2), {"type": "layernorm", "epsilon": 1e-2}),
        (nn.Linear(20, 16), dense(16)),
        # PyTorch's Hardsigmoid is x/6 + 1/2; ONNX's default alpha is 0.2.
        (nn.Hardsigmoid(), act({"name": "hard_sigmoid", "alpha": 0.16666667})),
        (nn.Linear(16, 16), dense(16)),
        (nn.GELU(approximate="tanh"), act({"name": "gelu", "approximate": "tanh"})),
        (nn.Dropout(0.3), {"type": "dropout", "rate": 0.3}),
        (nn.Linear(16, 16), dense(16)),
        (nn.SELU(), act("selu")),
        (nn.Linear(16, 12), dense(12)),
        (nn.Sigmoid(), act("sigmoid")),
        (nn.Linear(12, 12), dense(12)),
        (nn.Softsign(), act("softsign")),
        (nn.Linear(12, 12), dense(12)),
        (nn.GELU(), act("gelu")),
        (nn.Linear(12, 12), dense(12)),
        (nn.ReLU(), act("relu")),
        (nn.Linear(12, 12), dense(12)),
        (nn.Tanh(), act("tanh")),
        (nn.Linear(12, 6), dense(6)),
        (nn.LogSoftmax(dim=1), act("log_softmax")),
    ]


def fuse(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dense layers absorb the activation after them; each keeps its module index as name."""
    fused: list[dict[str, Any]] = []
    for index, layer in enumerate(layers):
        previous = fused[-1] if fused else None
        if (
            layer["type"] == "activation"
            and previous is not None
            and previous["type"] == "dense"
            and "activation" not in previous
        ):
            previous["activation"] = layer["activation"]
        else:
            fused.append({**layer, "name": str(index)})
    return fused


@pytest.fixture(scope="module")
def torch_model() -> tuple[Any, dict[str, np.ndarray], list[dict[str, Any]]]:
    return make_torch_model(pytest.importorskip("torch"))


def make_torch_model(torch: Any) -> tuple[Any, dict[str, np.ndarray], list[dict[str, Any]]]:
    """A randomly initialised Sequential in eval mode, its state dict, and its spec layers."""
    torch.manual_seed(7)
    zoo = torch_zoo(torch)
    model = torch.nn.Sequential(*(module for module, _ in zoo))
    with torch.no_grad():
        # torch's default Linear init shrinks the signal layer by layer, and fresh
        # BatchNorm/LayerNorm parameters are ones and zeros: redraw them so that every
        # layer's output still varies from row to row at the end of this deep stack.
        for module in model:
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 2.5 / module.in_features**0.5)
                module.bias.normal_(0.0, 0.5)
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.25, 4.0)
                module.num_batches_tracked.fill_(17)
            if isinstance(module, torch.nn.BatchNorm1d | torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.3)
    model.eval()
    state = {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}
    return model, state, [layer for _, layer in zoo]


def torch_outputs(model: Any, x: np.ndarray) -> list[np.ndarray]:
    """The output of every module of ``model`` (in eval mode) for ``x``."""
    import torch

    outputs = []
    value = torch.from_numpy(x)
    with torch.no_grad():
        for module in model:
            value = module(value)
            outputs.append(value.numpy())
    return outputs


def assert_matches_layer(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Agreement to 1e-5 of the layer's own scale.

    Thirty float32 layers in a row, summed in different orders by torch and ONNX Runtime,
    drift apart by a few float32 ulps of the largest values in play, so the tolerance is
    relative to the largest magnitude of the layer's output (>= 1), not to each element.
    """
    assert got.dtype == np.float32 and got.shape == want.shape, what
    assert np.isfinite(want).all(), what
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=0, err_msg=what)


@pytest.mark.parametrize("opset", [None, 17], ids=["newest-opset", "opset17"])
@pytest.mark.parametrize("fused", [False, True], ids=["layer-per-module", "fused-dense"])
def test_torch_live_matches_torch_forward(
    torch_model: tuple[Any, dict[str, np.ndarray], list[dict[str, Any]]],
    write_spec: Callable[..., Path],
    fused: bool,
    opset: int | None,
) -> None:
    """A fresh Sequential: every module's output (layer per module) or the final one (fused)."""
    model, state, layers = torch_model
    document: dict[str, Any] = {
        "name": "torch-zoo",
        "input": {"name": "x", "shape": [10]},
        "output": {"name": "log_probs"},
        "weight_layout": "out_in",
        "layers": fuse(layers) if fused else layers,
    }
    if not fused:
        # Every module's output is a graph output named by its index, as in the state dict.
        document["expose"] = [str(index) for index in range(len(layers) - 1)]
    if opset is not None:
        document["opset"] = opset
    spec = load_spec(write_spec(document, state))
    session = runtime.session(build(spec).SerializeToString())
    names = [output.name for output in session.get_outputs()]
    rng = np.random.default_rng(3)
    # Scale 50 drives pre-activations into the thousands: Softplus beyond torch's threshold
    # of 20, Mish/SiLU/ELU far into the negative range, saturated Sigmoid and Tanh.
    for scale in (1.0, 50.0):
        x = (rng.standard_normal((128, 10)) * scale).astype(np.float32)
        wants = torch_outputs(model, x)
        want = wants[-1]
        assert want.shape == (128, 6)
        # A real test: the log-probabilities still differ from row to row.
        assert want.std(axis=0).min() > 0.1
        got = dict(zip(names, session.run(names, {"x": x}), strict=True))
        assert_matches_layer(got["log_probs"], want, f"scale {scale}: output")
        assert_matches_layer(reference.forward(spec, x), want, f"scale {scale}: reference")
        if not fused:
            assert len(names) == len(model)
            for index, module_output in enumerate(wants[:-1]):
                what = f"scale {scale}: module {index} {type(model[index]).__name__}"
                assert_matches_layer(got[str(index)], module_output, what)


def test_onnx_default_hard_sigmoid_is_not_pytorchs(write_spec: Callable[..., Path]) -> None:
    """Why the torch spec says alpha 1/6: the default (ONNX's 0.2) computes something else."""
    torch = pytest.importorskip("torch")
    x = np.linspace(-4.0, 4.0, 33, dtype=np.float32).reshape(3, 11)
    with torch.no_grad():
        want = torch.nn.Hardsigmoid()(torch.from_numpy(x)).numpy()
    outputs = {}
    for key, activation in {
        "default": "hard_sigmoid",
        "pytorch": {"name": "hard_sigmoid", "alpha": 0.16666667},
    }.items():
        document = {
            "name": "hs",
            "input": {"shape": [11]},
            "layers": [{"type": "activation", "activation": activation}],
        }
        outputs[key] = run_ort(load_spec(write_spec(document)), x)
    np.testing.assert_allclose(outputs["pytorch"], want, atol=1e-6, rtol=0)
    assert max_abs(outputs["default"], want) > 0.05  # 1/12 at x = 2.5


TORCH_WITHOUT_AFFINE: dict[str, tuple[Callable[[Any], Any], dict[str, Any]]] = {
    "linear-bias-false": (
        lambda nn: nn.Linear(4, 3, bias=False),
        {"type": "dense", "units": 3, "use_bias": False},
    ),
    "batchnorm-affine-false": (
        lambda nn: nn.BatchNorm1d(4, affine=False),
        {"type": "batchnorm", "affine": False},
    ),
    "layernorm-no-affine": (
        lambda nn: nn.LayerNorm(4, elementwise_affine=False),
        {"type": "layernorm", "affine": False},
    ),
    "layernorm-bias-false": (
        lambda nn: nn.LayerNorm(4, bias=False),
        {"type": "layernorm", "use_bias": False},
    ),
}


@pytest.mark.parametrize("module", list(TORCH_WITHOUT_AFFINE), ids=list(TORCH_WITHOUT_AFFINE))
def test_torch_modules_without_optional_parameters(
    module: str, write_spec: Callable[..., Path]
) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(5)
    make, layer = TORCH_WITHOUT_AFFINE[module]
    model = torch.nn.Sequential(make(torch.nn))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    model.eval()
    state = {key: value.numpy().copy() for key, value in model.state_dict().items()}
    document = {
        "name": "no-affine",
        "input": {"shape": [4]},
        "weight_layout": "out_in",
        "layers": [layer],
    }
    spec = load_spec(write_spec(document, state))
    x = np.random.default_rng(6).normal(size=(8, 4)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_ort(spec, x), want, atol=1e-6, rtol=1e-6)


# --- c. scikit-learn -------------------------------------------------------------------------

SKLEARN_ACTIVATIONS = {
    "relu": "relu",
    "tanh": "tanh",
    "logistic": "sigmoid",
    "identity": "identity",
}


def sklearn_mlp_spec(
    estimator: Any, features: int, prefix: list[dict[str, Any]] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A spec document and weights for a fitted MLPClassifier/MLPRegressor.

    ``coefs_[i]`` is (inputs, units): ``weight_layout: in_out``. Dense layers follow the
    ``prefix`` layers, so their positional names start after them.
    """
    prefix = prefix or []
    hidden = SKLEARN_ACTIVATIONS[estimator.activation]
    last = len(estimator.coefs_) - 1
    layers = list(prefix)
    weights = {}
    for i, (coef, intercept) in enumerate(
        zip(estimator.coefs_, estimator.intercepts_, strict=True)
    ):
        activation = SKLEARN_ACTIVATIONS.get(estimator.out_activation_, estimator.out_activation_)
        layers.append(
            {
                "type": "dense",
                "units": coef.shape[1],
                "activation": activation if i == last else hidden,
            }
        )
        name = str(len(layers) - 1)
        weights[f"{name}.weight"] = coef
        weights[f"{name}.bias"] = intercept
    document = {
        "name": "sklearn-mlp",
        "input": {"name": "x", "shape": [features]},
        "output": {"name": "y"},
        "weight_layout": "in_out",
        "layers": layers,
    }
    return document, weights


def fit_quietly(estimator: Any, x: np.ndarray, y: np.ndarray) -> Any:
    """Fit with few iterations: the ConvergenceWarning that says so is expected."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(x, y)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
@pytest.mark.parametrize("classes", [4, 2], ids=["4-classes", "binary"])
def test_sklearn_classifier_matches_predict_proba(
    activation: str, classes: int, write_spec: Callable[..., Path]
) -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    x, labels = make_classification(
        n_samples=400, n_features=9, n_informative=6, n_classes=classes, random_state=0
    )
    clf = fit_quietly(
        MLPClassifier(
            hidden_layer_sizes=(16, 8), activation=activation, max_iter=40, random_state=0
        ),
        x,
        labels,
    )
    assert clf.out_activation_ == ("softmax" if classes > 2 else "logistic")
    spec = load_spec(write_spec(*sklearn_mlp_spec(clf, 9)))
    x32 = x.astype(np.float32)
    want = clf.predict_proba(x32)  # the same float32 rows the ONNX file gets
    got = run_ort(spec, x32)
    if classes == 2:
        # One logistic unit; predict_proba adds the complement column.
        assert got.shape == (len(x), 1)
        got = np.hstack([1 - got, got])
    assert got.shape == want.shape == (len(x), classes)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(clf.classes_[got.argmax(axis=1)], clf.predict(x32))
    # The NumPy reference computes in float64 from the float32-stored weights.
    np.testing.assert_allclose(reference.forward(spec, x32)[:, -1], want[:, -1], atol=1e-5)


def test_sklearn_regressor_matches_predict(write_spec: Callable[..., Path]) -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import make_regression
    from sklearn.neural_network import MLPRegressor

    x, target = make_regression(n_samples=300, n_features=7, n_targets=2, random_state=1)
    reg = fit_quietly(
        MLPRegressor(hidden_layer_sizes=(16, 8), activation="tanh", max_iter=60, random_state=0),
        x,
        target / 50,
    )
    assert reg.out_activation_ == "identity"
    spec = load_spec(write_spec(*sklearn_mlp_spec(reg, 7)))
    x32 = x.astype(np.float32)
    want = reg.predict(x32)
    got = run_ort(spec, x32)
    assert got.shape == want.shape == (len(x), 2)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_sklearn_pipeline_with_standard_scaler(write_spec: Callable[..., Path]) -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, labels = make_classification(
        n_samples=400, n_features=6, n_informative=4, n_classes=3, random_state=2
    )
    # Features far from zero mean and unit variance, so that the scaler matters.
    x = x * np.array([1.0, 10.0, 0.1, 100.0, 3.0, 0.5]) + np.array([5.0, -50.0, 0.3, 1e3, 0, 2])
    pipeline = fit_quietly(
        make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=60, random_state=0),
        ),
        x,
        labels,
    )
    scaler, clf = pipeline[0], pipeline[-1]
    normalize = {
        "type": "normalize",
        "mean": scaler.mean_.tolist(),
        "std": scaler.scale_.tolist(),
    }
    spec = load_spec(write_spec(*sklearn_mlp_spec(clf, 6, prefix=[normalize])))
    assert [layer.type for layer in spec.layers] == ["normalize", "dense", "dense", "dense"]
    x32 = x.astype(np.float32)
    want = pipeline.predict_proba(x32)
    got = run_ort(spec, x32)
    assert got.shape == want.shape == (len(x), 3)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(clf.classes_[got.argmax(axis=1)], pipeline.predict(x32))


# --- d. the two weight layouts -------------------------------------------------------------


def layout_pair(write_spec: Callable[..., Path]) -> tuple[Spec, Spec]:
    """The same network written once as in_out and once transposed as out_in."""
    rng = np.random.default_rng(11)
    shapes = [(7, 5), (5, 4), (4, 3)]  # (in, out)
    in_out = {}
    for i, (fan_in, fan_out) in enumerate(shapes):
        in_out[f"{2 * i}.weight"] = rng.normal(size=(fan_in, fan_out)).astype(np.float32)
        in_out[f"{2 * i}.bias"] = rng.normal(size=fan_out).astype(np.float32)
    out_in = {
        key: (value.T.copy() if key.endswith("weight") else value) for key, value in in_out.items()
    }
    layers = [
        {"type": "dense", "units": 5},
        {"type": "activation", "activation": "tanh"},
        {"type": "dense", "units": 4, "activation": "relu"},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
    specs = []
    for layout, weights in (("in_out", in_out), ("out_in", out_in)):
        document = {
            "name": "layouts",
            "input": {"shape": [7]},
            "weight_layout": layout,
            "layers": layers,
        }
        specs.append(load_spec(write_spec(document, weights)))
    return specs[0], specs[1]


def test_weight_layouts_build_identical_graphs(write_spec: Callable[..., Path]) -> None:
    in_out, out_in = layout_pair(write_spec)
    a, b = build(in_out), build(out_in)
    inits_a = [(init.name, init.SerializeToString()) for init in a.graph.initializer]
    inits_b = [(init.name, init.SerializeToString()) for init in b.graph.initializer]
    assert inits_a == inits_b
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    x = np.random.default_rng(12).normal(size=(50, 7)).astype(np.float32) * 3
    np.testing.assert_array_equal(run_ort(in_out, x), run_ort(out_in, x))
    np.testing.assert_array_max_ulp(
        reference.forward(in_out, x), reference.forward(out_in, x), maxulp=1
    )


# --- e. Keras parameter names ------------------------------------------------------------------


def test_keras_names_are_aliases_of_the_canonical_names(write_spec: Callable[..., Path]) -> None:
    rng = np.random.default_rng(21)
    kernel = rng.normal(size=(6, 5)).astype(np.float32)  # Keras Dense kernel: (in, out)
    bias = rng.normal(size=5).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, size=5).astype(np.float32)
    beta = rng.normal(size=5).astype(np.float32)
    moving_mean = rng.normal(size=5).astype(np.float32)
    moving_variance = rng.uniform(0.1, 3.0, size=5).astype(np.float32)
    ln_gamma = rng.uniform(0.5, 2.0, size=5).astype(np.float32)
    ln_beta = rng.normal(size=5).astype(np.float32)
    document = {
        "name": "keras-names",
        "input": {"shape": [6]},
        "weight_layout": "in_out",
        "layers": [
            {"type": "dense", "name": "dense", "units": 5},
            # Keras' BatchNormalization default epsilon is 1e-3 (ours is 1e-5).
            {"type": "batchnorm", "name": "batch_normalization", "epsilon": 1e-3},
            {"type": "layernorm", "name": "layer_normalization", "epsilon": 1e-3},
        ],
    }
    keras = {
        "dense.kernel": kernel,
        "dense.bias": bias,
        "batch_normalization.gamma": gamma,
        "batch_normalization.beta": beta,
        "batch_normalization.moving_mean": moving_mean,
        "batch_normalization.moving_variance": moving_variance,
        "layer_normalization.gamma": ln_gamma,
        "layer_normalization.beta": ln_beta,
    }
    canonical = {
        "dense.weight": kernel,
        "dense.bias": bias,
        "batch_normalization.scale": gamma,
        "batch_normalization.bias": beta,
        "batch_normalization.mean": moving_mean,
        "batch_normalization.var": moving_variance,
        "layer_normalization.scale": ln_gamma,
        "layer_normalization.bias": ln_beta,
    }
    from_keras = load_spec(write_spec(document, keras))
    from_canonical = load_spec(write_spec(document, canonical))
    assert from_keras.sha256 == from_canonical.sha256
    assert build(from_keras).SerializeToString() == build(from_canonical).SerializeToString()

    x = rng.normal(size=(40, 6)).astype(np.float32) * 2
    got = run_ort(from_keras, x)
    np.testing.assert_array_equal(got, run_ort(from_canonical, x))
    # What Keras computes at inference, written out: Dense, BatchNormalization, LayerNormalization.
    h = x.astype(np.float64) @ kernel + bias
    h = gamma * (h - moving_mean) / np.sqrt(moving_variance + 1e-3) + beta
    mean, var = h.mean(axis=-1, keepdims=True), h.var(axis=-1, keepdims=True)
    want = ln_gamma * (h - mean) / np.sqrt(var + 1e-3) + ln_beta
    np.testing.assert_allclose(got, want.astype(np.float32), atol=1e-5, rtol=1e-5)
