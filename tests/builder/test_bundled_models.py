"""The specs shipped in ``models/`` build, match the reference, and the classifier classifies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxforge.builder import load_spec, reference
from tests.builder.runs import run_onnx
from tests.conftest import MODELS

SPECS = sorted(MODELS.glob("*/spec.yaml"))


def test_the_bundled_models_are_there() -> None:
    assert {path.parent.name for path in SPECS} >= {"digits-mlp", "wide-mlp"}


@pytest.mark.parametrize("spec_path", SPECS, ids=[path.parent.name for path in SPECS])
def test_bundled_model_matches_reference(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    x = np.random.default_rng(3).normal(size=(64, *spec.input_shape)).astype(np.float32)
    got = run_onnx(spec, x)
    want = reference.run(spec, x)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-4, err_msg=name)


def test_digits_classifier_is_accurate_on_held_out_images() -> None:
    spec = load_spec(MODELS / "digits-mlp" / "spec.yaml")
    held_out = np.load(MODELS / "digits-mlp" / "heldout.npz")
    x, y = held_out["x"], held_out["y"]
    out = run_onnx(spec, x)
    onnx_labels = out["probabilities"].argmax(axis=1)
    np.testing.assert_array_equal(onnx_labels, reference.forward(spec, x).argmax(axis=1))
    assert (onnx_labels == y).mean() > 0.95
    assert out["hidden"].shape == (len(x), 32) and (out["hidden"] >= 0).all()  # relu features


def test_digits_dataset_generator_is_deterministic() -> None:
    import importlib.util

    loader = importlib.util.spec_from_file_location("train", MODELS / "digits-mlp" / "train.py")
    assert loader is not None and loader.loader is not None
    train = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(train)
    x1, y1 = train.make_dataset(200, seed=1)
    x2, y2 = train.make_dataset(200, seed=1)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (200, 64) and x1.dtype == np.float32
    assert set(np.unique(y1)) == set(range(10)) and x1.min() >= 0 and x1.max() <= 1
