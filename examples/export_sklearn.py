"""Train a scikit-learn MLP on 8x8 digits and turn it into an onnxforge spec and ONNX file.

    pip install scikit-learn
    python examples/export_sklearn.py                  # or: --out DIR --hidden 32

Writes into ``--out`` (default ``sklearn-digits/``):

- ``spec.yaml`` + ``weights.npz``: the StandardScaler as a ``normalize`` layer, then one
  ``dense`` layer per ``coefs_`` matrix (scikit-learn stores them (inputs, units): the
  ``in_out`` layout);
- ``heldout.npz``: the test rows (``x``, ``y``), for ``onnxforge verify --input`` or the
  client examples' ``--data``;
- ``repository/sklearn-digits/1/model.onnx``: built by ``onnxforge build``.

Then it runs the ONNX file in ONNX Runtime on the test rows and checks that it gives what
``predict_proba`` gives: it prints the largest difference and fails above 1e-5.
The data set is scikit-learn's bundled ``load_digits`` (no download).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

NAME = "sklearn-digits"
# scikit-learn's activation names -> onnxforge's.
ACTIVATIONS = {
    "relu": "relu",
    "tanh": "tanh",
    "logistic": "sigmoid",
    "identity": "identity",
    "softmax": "softmax",
}


def train(hidden: int, max_iter: int) -> tuple[Pipeline, np.ndarray, np.ndarray]:
    """A fitted StandardScaler + MLPClassifier pipeline, and the rows it did not see."""
    digits = load_digits()  # 1797 images, 64 pixels valued 0..16, labels 0..9
    x = digits.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    pipeline = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=0),
    )
    # A short training run stops before the optimizer has fully converged, and
    # scikit-learn warns about it; that is expected for an example, so keep it quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(x_train, y_train)
    return pipeline, x_test, y_test


def to_spec(pipeline: Pipeline) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """The spec document and the weights (keys ``<layer name>.weight`` / ``.bias``)."""
    scaler, clf = pipeline[0], pipeline[-1]
    layers: list[dict[str, object]] = [
        # StandardScaler computes (x - mean_) / scale_; so does a normalize layer.
        {
            "type": "normalize",
            "name": "scaler",
            "mean": scaler.mean_.tolist(),
            "std": scaler.scale_.tolist(),
        }
    ]
    weights: dict[str, np.ndarray] = {}
    last = len(clf.coefs_) - 1
    for i, (coef, intercept) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        name = "output" if i == last else f"hidden{i}"
        # Hidden layers use clf.activation; the last one softmax (logistic for 2 classes).
        activation = ACTIVATIONS[clf.out_activation_ if i == last else clf.activation]
        layers.append(
            {"type": "dense", "name": name, "units": coef.shape[1], "activation": activation}
        )
        weights[f"{name}.weight"] = coef  # (inputs, units): weight_layout in_out
        weights[f"{name}.bias"] = intercept
    document = {
        "name": NAME,
        "description": "scikit-learn MLPClassifier on load_digits, by examples/export_sklearn.py",
        "input": {"name": "x", "shape": [64]},
        "output": {"name": "probabilities"},
        "weights": "weights.npz",
        "weight_layout": "in_out",
        "layers": layers,
        "variants": ["fp32"],  # add fp16, int8-dynamic, int8-static for quantized copies
    }
    return document, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(NAME), help="folder to write into")
    parser.add_argument("--hidden", type=int, default=32, help="units of the hidden layer")
    parser.add_argument("--max-iter", type=int, default=100, help="training epochs")
    args = parser.parse_args()

    pipeline, x_test, y_test = train(args.hidden, args.max_iter)
    print(f"scikit-learn test accuracy: {pipeline.score(x_test, y_test):.4f}")

    document, weights = to_spec(pipeline)
    args.out.mkdir(parents=True, exist_ok=True)
    spec = args.out / "spec.yaml"
    # default_flow_style=None: lists of numbers on one line, [a, b, ...], as in the README.
    spec.write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None))
    np.savez(args.out / "weights.npz", **weights)
    np.savez(args.out / "heldout.npz", x=x_test, y=y_test)
    print(f"wrote {spec} and {args.out / 'weights.npz'}")

    # Build it as a user would: `onnxforge build spec.yaml -r repository`.
    repository = args.out / "repository"
    command = [sys.executable, "-m", "onnxforge", "build", str(spec), "-r", str(repository)]
    print("$ onnxforge build", spec, "-r", repository)
    subprocess.run(command, check=True)
    model = repository / NAME / "1" / "model.onnx"

    # The ONNX file against scikit-learn, on the same float32 rows.
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {"x": x_test})
    want = pipeline.predict_proba(x_test)
    error = float(np.abs(got - want).max())
    print(f"max abs error vs predict_proba: {error:.3g} on {len(x_test)} rows")
    assert error < 1e-5, f"ONNX and scikit-learn disagree by {error}"
    agree = (got.argmax(axis=1) == pipeline.predict(x_test)).mean()
    print(f"ONNX accuracy: {(got.argmax(axis=1) == y_test).mean():.4f}, agreement {agree:.4f}")
    print(f"model: {model}")


if __name__ == "__main__":
    main()
