"""onnxforge's server: the Open Inference Protocol over gRPC on ONNX Runtime (in progress)."""

__all__: list[str] = []
