"""The activations a spec may name, with their parameters and defaults.

One table shared by the spec parser, the graph builder and the NumPy reference, so the
three cannot disagree about which activations exist or what their defaults are. Defaults
are the ONNX operators' defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# name -> {parameter: default}
ACTIVATIONS: Final[Mapping[str, Mapping[str, float | str]]] = MappingProxyType(
    {
        "identity": {},
        "relu": {},
        "leaky_relu": {"alpha": 0.01},
        "sigmoid": {},
        "tanh": {},
        "softmax": {},
        "log_softmax": {},
        "gelu": {"approximate": "none"},
        "elu": {"alpha": 1.0},
        # The SELU constants exactly as the ONNX operator defines them (float32 values).
        "selu": {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
        "softplus": {},
        "softsign": {},
        "hard_sigmoid": {"alpha": 0.2, "beta": 0.5},
        "silu": {},
        "mish": {},
    }
)

# Outputs of these activations are class scores: verify reports argmax agreement on them.
CLASSIFIER_ACTIVATIONS: Final = frozenset({"softmax", "log_softmax"})

GELU_APPROXIMATIONS: Final = ("none", "tanh")
