"""Train the digits-mlp example: a 64-32-10 MLP on synthetic 8x8 digit images, in NumPy.

The data set is rendered here from 5x7 bitmap glyphs with random placement, stroke
intensity, pixel noise and flipped pixels, so the example needs no download. Running the
script writes, next to itself:

- ``weights.npz``: the dense layers' parameters, keys ``hidden.*`` and ``2.*`` (in_out layout)
- ``spec.yaml``: the layer spec, including the normalize layer's per-pixel mean and std
- ``heldout.npz``: 512 held-out samples (``x``, ``y``) to check a built model's accuracy

Every output is byte-for-byte reproducible: all randomness comes from fixed seeds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIDE = 8
FEATURES = SIDE * SIDE
HIDDEN = 32
CLASSES = 10
N_TRAIN = 6000
N_TEST = 2000
N_HELDOUT_FILE = 512
DATA_SEED = 20240607
INIT_SEED = 7
EPOCHS = 20
BATCH = 64
LEARNING_RATE = 3e-3
STD_FLOOR = 0.05
SIGNIFICANT_DIGITS = 6

# 5 wide x 7 tall glyphs; "#" is ink.
GLYPHS: tuple[tuple[str, ...], ...] = (
    (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
)
BITMAPS = np.array([[[c == "#" for c in row] for row in glyph] for glyph in GLYPHS], np.float32)
GLYPH_H, GLYPH_W = BITMAPS.shape[1:]

# Corruption strengths, chosen so a small MLP lands in the mid-to-high 90s, not at 100%.
STROKE_RANGE = (0.5, 1.0)
NOISE_STD = 0.08
DROPOUT_INK = 0.03  # chance each ink pixel of the glyph is missing
FLIPS = 2  # random pixels per image set to 1 - value


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of shape (n, 64), float32 in [0, 1], and their int64 labels."""
    rng = np.random.default_rng(seed)
    # Balanced classes, in random order.
    labels = rng.permutation(np.arange(n) % CLASSES).astype(np.int64)
    ink = BITMAPS[labels] * (rng.random((n, GLYPH_H, GLYPH_W)) >= DROPOUT_INK)
    ink *= rng.uniform(*STROKE_RANGE, size=(n, 1, 1)).astype(np.float32)
    images = np.zeros((n, SIDE, SIDE), np.float32)
    rows = rng.integers(0, SIDE - GLYPH_H + 1, size=n)
    cols = rng.integers(0, SIDE - GLYPH_W + 1, size=n)
    for i in range(n):
        images[i, rows[i] : rows[i] + GLYPH_H, cols[i] : cols[i] + GLYPH_W] = ink[i]
    images += rng.normal(0.0, NOISE_STD, size=images.shape).astype(np.float32)
    np.clip(images, 0.0, 1.0, out=images)
    flat = images.reshape(n, FEATURES)
    flips = rng.integers(0, FEATURES, size=(n, FLIPS))
    picked = np.arange(n)[:, None]
    flat[picked, flips] = 1.0 - flat[picked, flips]
    return flat, labels


def round_significant(values: np.ndarray) -> list[float]:
    """Values rounded to SIGNIFICANT_DIGITS, as Python floats: exactly what the spec holds."""
    return [float(f"{v:.{SIGNIFICANT_DIGITS}g}") for v in values.tolist()]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def forward(params: Mapping[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hidden activations and class probabilities for already-normalized ``x``."""
    hidden = np.maximum(x @ params["hidden.weight"] + params["hidden.bias"], 0.0)
    return hidden, softmax(hidden @ params["2.weight"] + params["2.bias"])


def accuracy(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float((forward(params, x)[1].argmax(axis=1) == y).mean())


def train(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Mini-batch Adam on cross-entropy; ``x`` is already normalized."""
    rng = np.random.default_rng(seed)
    params = {
        "hidden.weight": rng.normal(0.0, np.sqrt(2.0 / FEATURES), (FEATURES, HIDDEN)),
        "hidden.bias": np.zeros(HIDDEN),
        "2.weight": rng.normal(0.0, np.sqrt(2.0 / HIDDEN), (HIDDEN, CLASSES)),
        "2.bias": np.zeros(CLASSES),
    }
    params = {key: value.astype(np.float32) for key, value in params.items()}
    moment1 = {key: np.zeros_like(value) for key, value in params.items()}
    moment2 = {key: np.zeros_like(value) for key, value in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    step = 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            batch = order[start : start + BATCH]
            xb, tb = x[batch], onehot[batch]
            hidden, probs = forward(params, xb)
            # d(mean cross-entropy)/d(logits) for softmax outputs.
            dlogits = (probs - tb) / len(batch)
            dhidden = (dlogits @ params["2.weight"].T) * (hidden > 0)
            grads = {
                "hidden.weight": xb.T @ dhidden,
                "hidden.bias": dhidden.sum(axis=0),
                "2.weight": hidden.T @ dlogits,
                "2.bias": dlogits.sum(axis=0),
            }
            step += 1
            correction1 = 1.0 - beta1**step
            correction2 = 1.0 - beta2**step
            for key, grad in grads.items():
                moment1[key] = beta1 * moment1[key] + (1.0 - beta1) * grad
                moment2[key] = beta2 * moment2[key] + (1.0 - beta2) * grad * grad
                update = (moment1[key] / correction1) / (np.sqrt(moment2[key] / correction2) + eps)
                params[key] = (params[key] - LEARNING_RATE * update).astype(np.float32)
    return params


def yaml_float(value: float) -> str:
    # Positional notation always has a ".", which YAML 1.1 (PyYAML) needs to read a float.
    return np.format_float_positional(value, trim="0")


def yaml_floats(values: Sequence[float], indent: str, per_line: int = 8) -> str:
    """A flow-style YAML list, wrapped so lines stay readable."""
    lines = [
        ", ".join(yaml_float(v) for v in values[start : start + per_line])
        for start in range(0, len(values), per_line)
    ]
    return "[" + f",\n{indent}".join(lines) + "]"


def spec_text(mean: Sequence[float], std: Sequence[float], test_accuracy: float) -> str:
    return (
        "# Written by train.py; edit that script and rerun it instead of editing this file.\n"
        "name: digits-mlp\n"
        "description: synthetic 8x8 digit images (0-9) classifier, "
        f"{100 * test_accuracy:.2f}% held-out accuracy ({N_TEST} samples), trained by train.py\n"
        "input: {name: x, shape: [64], dtype: float32, "
        "distribution: {uniform: {low: 0.0, high: 1.0}}}\n"
        "output: {name: probabilities}\n"
        "expose: [hidden]\n"
        "weights: weights.npz\n"
        "weight_layout: in_out\n"
        "layers:\n"
        "  - {type: normalize,\n"
        f"     mean: {yaml_floats(mean, ' ' * 12)},\n"
        f"     std: {yaml_floats(std, ' ' * 11)}}}\n"
        "  - {type: dense, name: hidden, units: 32, activation: relu}\n"
        "  - {type: dense, units: 10, activation: softmax}\n"
        "variants: [fp32, fp16, int8-dynamic, int8-static]\n"
        "serving: {max_batch_size: 64, max_queue_delay_us: 500, instances: 1}\n"
    )


def main() -> None:
    started = time.perf_counter()
    x, y = make_dataset(N_TRAIN + N_TEST, DATA_SEED)
    x_train, y_train = x[:N_TRAIN], y[:N_TRAIN]
    x_test, y_test = x[N_TRAIN:], y[N_TRAIN:]

    # Train with the rounded statistics the spec stores (as float32, like the built model),
    # so the spec and weights reproduce this network exactly.
    mean = round_significant(x_train.mean(axis=0, dtype=np.float64))
    std = round_significant(np.maximum(x_train.std(axis=0, dtype=np.float64), STD_FLOOR))
    mean32, std32 = np.array(mean, np.float32), np.array(std, np.float32)

    def normalize(images: np.ndarray) -> np.ndarray:
        return (images - mean32) / std32

    params = train(normalize(x_train), y_train, INIT_SEED)
    train_accuracy = accuracy(params, normalize(x_train), y_train)
    test_accuracy = accuracy(params, normalize(x_test), y_test)
    print(f"train accuracy:    {train_accuracy:.4f} ({N_TRAIN} samples)")
    print(f"held-out accuracy: {test_accuracy:.4f} ({N_TEST} samples)")

    # np.savez is byte-reproducible: it adds entries through ZipFile.open(name, "w"), which
    # stamps every entry 1980-01-01 rather than the current time.
    np.savez(HERE / "weights.npz", **params)
    np.savez(
        HERE / "heldout.npz",
        x=x_test[:N_HELDOUT_FILE],
        y=y_test[:N_HELDOUT_FILE].astype(np.int64),
    )
    (HERE / "spec.yaml").write_text(spec_text(mean, std, test_accuracy), encoding="utf-8")
    print(f"wrote weights.npz, heldout.npz, spec.yaml in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
