"""Every activation, in ONNX Runtime, against the NumPy reference, extreme inputs included."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.builder import reference
from onnxforge.builder.runtime import MIN_OPSET, newest_opset
from onnxforge.builder.schema import Document
from onnxforge.builder.spec import resolve
from tests.builder.cases import activation_case, activation_variants
from tests.builder.runs import assert_close, run_onnx

VARIANTS = activation_variants()


@pytest.mark.parametrize("opset", [MIN_OPSET, None], ids=["opset17", "newest"])
@pytest.mark.parametrize(("case_id", "activation"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_activation_matches_reference(case_id: str, activation: object, opset: int | None) -> None:
    case = activation_case(case_id, activation, opset)
    spec = resolve(Document.model_validate(case.document))
    assert spec.opset == (opset or newest_opset())
    got = run_onnx(spec, case.inputs)["y"]
    want = reference.forward(spec, case.inputs)
    assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "sigmoid", "softplus", "mish", "silu"])
def test_reference_is_finite_where_naive_formulas_overflow(name: str) -> None:
    case = activation_case(name, name)
    spec = resolve(Document.model_validate(case.document))
    with np.errstate(all="raise"):  # the reference must not even overflow internally
        out = reference.forward(spec, case.inputs[:2].astype(np.float32) / 1e26)
    assert np.isfinite(reference.forward(spec, case.inputs)).all()
    assert out.dtype == np.float32


def test_reference_values_for_known_points() -> None:
    # Values computed by hand from the definitions, independent of either implementation.
    x = np.array([[-2.0, 0.0, 3.0]], dtype=np.float32)
    expected = {
        "relu": [0.0, 0.0, 3.0],
        "leaky_relu": [-0.02, 0.0, 3.0],
        "sigmoid": [1 / (1 + np.exp(2.0)), 0.5, 1 / (1 + np.exp(-3.0))],
        "softsign": [-2 / 3, 0.0, 0.75],
        "hard_sigmoid": [0.1, 0.5, 1.0],
        "elu": [np.exp(-2.0) - 1, 0.0, 3.0],
        "softmax": list(np.exp([-2.0, 0.0, 3.0]) / np.exp([-2.0, 0.0, 3.0]).sum()),
    }
    for name, want in expected.items():
        document = {
            "name": "points",
            "input": {"shape": [3]},
            "layers": [{"type": "activation", "activation": name}],
        }
        spec = resolve(Document.model_validate(document))
        np.testing.assert_allclose(reference.forward(spec, x)[0], want, rtol=1e-6, err_msg=name)
