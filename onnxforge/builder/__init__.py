"""onnxforge's builder: layer specs to ONNX files, checked against a NumPy reference.

>>> spec = builder.load_spec("models/digits-mlp/spec.yaml")
>>> model = builder.build(spec)                  # onnx.ModelProto
>>> y = builder.reference.forward(spec, x)       # the independent NumPy forward pass
"""

from onnxforge.builder import reference
from onnxforge.builder.errors import ArtifactError, OnnxforgeError, SpecError, UnsupportedError
from onnxforge.builder.graph import build
from onnxforge.builder.spec import Layer, Spec, load_spec

__all__ = [
    "ArtifactError",
    "Layer",
    "OnnxforgeError",
    "Spec",
    "SpecError",
    "UnsupportedError",
    "build",
    "load_spec",
    "reference",
]
