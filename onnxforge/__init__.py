"""onnxforge: layer specs to verified ONNX files, quantized variants and a KServe v2 server.

``onnxforge.builder`` builds and verifies, ``onnxforge.server`` serves,
``onnxforge.client`` calls a server, ``onnxforge.cli`` is the ``onnxforge`` command.
"""

from onnxforge._version import __version__

__all__ = ["__version__"]
