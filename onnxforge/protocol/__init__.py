"""The Open Inference Protocol in Python, shared by the server and the client.

- ``datatypes``: the one table of tensor datatypes (protocol, NumPy, ONNX, ONNX Runtime,
  Triton, typed-contents field);
- ``tensors``: tensors on the wire <-> NumPy arrays, for requests and responses alike;
- ``headers``: the response headers onnxforge adds (variant, accuracy, spec hash);
- ``generated``: the messages and stubs generated from ``protos/``.

Nothing here imports ``onnx``, ``onnxruntime`` or ``grpc`` (``generated``'s stubs aside).
"""
