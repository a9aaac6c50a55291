"""Build a spec and run it in ONNX Runtime, for tests."""

from __future__ import annotations

import numpy as np

from onnxforge.builder import build, runtime
from onnxforge.builder.spec import Spec


def run_onnx(spec: Spec, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the built fp32 file, by name."""
    session = runtime.session(build(spec).SerializeToString())
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {spec.input_name: x}), strict=True))


def assert_close(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> None:
    """Element-wise |got - want| <= atol + rtol |want|; infinities must match exactly."""
    assert got.dtype == want.dtype == np.float32
    assert got.shape == want.shape
    assert not np.isnan(want).any(), "the reference produced NaN"
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
