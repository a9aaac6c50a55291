"""onnxforge: layer specs to verified ONNX files, quantized variants and a KServe v2 server."""

__version__ = "0.1.0"
