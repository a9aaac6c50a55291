"""Train a small PyTorch nn.Sequential on 8x8 digits and turn it into an onnxforge spec.

    pip install torch scikit-learn          # scikit-learn only for its bundled digits
    python examples/export_pytorch.py       # or: --out DIR --epochs 200

Writes into ``--out`` (default ``torch-digits/``):

- ``weights.npz``: the model's ``state_dict()`` as it is, saved with ``np.savez``: keys
  ``0.weight``, ``0.bias``, ``2.weight``, ``2.bias`` (the module positions), each weight
  (units, inputs) as ``nn.Linear`` stores it: ``weight_layout: out_in``;
- ``spec.yaml``: layers named like the modules, so every key finds its layer;
- ``heldout.npz``: the test rows (``x``, ``y``);
- ``repository/torch-digits/1/model.onnx``: built by ``onnxforge build``.

Then it runs the ONNX file in ONNX Runtime on the test rows and checks that it gives what
the PyTorch model gives: it prints the largest difference and fails above 1e-5.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

NAME = "torch-digits"


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """load_digits (bundled with scikit-learn, no download), split into train and test."""
    digits = load_digits()  # 1797 images, 64 pixels valued 0..16, labels 0..9
    return train_test_split(
        digits.data.astype(np.float32),
        digits.target,
        test_size=0.25,
        random_state=0,
        stratify=digits.target,
    )


def train(x: np.ndarray, y: np.ndarray, hidden: int, epochs: int) -> nn.Sequential:
    torch.manual_seed(0)
    # Positions 0..2 become the state-dict keys "0.weight", "0.bias", "2.weight", "2.bias".
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    inputs, targets = torch.from_numpy(x / 16.0), torch.from_numpy(y)  # pixels to 0..1
    for _ in range(epochs):  # full-batch training: the data set is tiny
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), targets)  # on logits
        loss.backward()
        optimizer.step()
    return model.eval()


def spec_document(hidden: int) -> dict[str, object]:
    return {
        "name": NAME,
        "description": "PyTorch nn.Sequential on load_digits, by examples/export_pytorch.py",
        "input": {"name": "x", "shape": [64]},
        "output": {"name": "probabilities"},
        "weights": "weights.npz",
        "weight_layout": "out_in",  # nn.Linear.weight is (units, inputs)
        "layers": [
            # The model was trained on pixels / 16; the served model takes raw pixels.
            {"type": "normalize", "name": "pixels", "mean": 0.0, "std": 16.0},
            {"type": "dense", "name": "0", "units": hidden},  # nn.Linear(64, hidden)
            {"type": "activation", "name": "1", "activation": "relu"},  # nn.ReLU()
            {"type": "dense", "name": "2", "units": 10},  # nn.Linear(hidden, 10)
            # Training used logits (cross_entropy); clients get probabilities.
            {"type": "activation", "name": "softmax", "activation": "softmax"},
        ],
        "variants": ["fp32"],  # add fp16, int8-dynamic, int8-static for quantized copies
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(NAME), help="folder to write into")
    parser.add_argument("--hidden", type=int, default=32, help="units of the hidden layer")
    parser.add_argument("--epochs", type=int, default=150, help="full-batch training steps")
    args = parser.parse_args()

    x_train, x_test, y_train, y_test = data()
    model = train(x_train, y_train, args.hidden, args.epochs)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x_test / 16.0)), dim=1).numpy()
    print(f"PyTorch test accuracy: {(want.argmax(axis=1) == y_test).mean():.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    spec = args.out / "spec.yaml"
    text = yaml.safe_dump(spec_document(args.hidden), sort_keys=False, default_flow_style=None)
    spec.write_text(text)
    # The state dict as it is: no renaming, no transposing.
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    np.savez(args.out / "weights.npz", **state)
    np.savez(args.out / "heldout.npz", x=x_test, y=y_test)
    print(f"wrote {spec} and {args.out / 'weights.npz'} (keys {', '.join(state)})")

    # Build it as a user would: `onnxforge build spec.yaml -r repository`.
    repository = args.out / "repository"
    print("$ onnxforge build", spec, "-r", repository)
    command = [sys.executable, "-m", "onnxforge", "build", str(spec), "-r", str(repository)]
    subprocess.run(command, check=True)
    model_file = repository / NAME / "1" / "model.onnx"

    # The ONNX file against PyTorch, on the same float32 rows.
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {"x": x_test})
    error = float(np.abs(got - want).max())
    print(f"max abs error vs PyTorch: {error:.3g} on {len(x_test)} rows")
    assert error < 1e-5, f"ONNX and PyTorch disagree by {error}"
    agree = (got.argmax(axis=1) == want.argmax(axis=1)).mean()
    print(f"ONNX accuracy: {(got.argmax(axis=1) == y_test).mean():.4f}, agreement {agree:.4f}")
    print(f"model: {model_file}")


if __name__ == "__main__":
    main()
