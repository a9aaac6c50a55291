"""A NumPy-in, NumPy-out client for any Open Inference Protocol server (sync and asyncio).

    >>> with InferenceClient("127.0.0.1:8001") as client:
    ...     client.infer("digits-mlp", {"x": rows})["probabilities"]

Requests carry raw little-endian bytes (no per-element encoding); answers are decoded from
raw or typed contents by the same codec the server uses (:mod:`onnxforge.protocol.tensors`).
TLS and a bearer token are options of the connection; an address without a port means
8001. Besides inference: streaming (``stream``, one :class:`StreamResult` per request),
health (``live``, ``ready``), metadata (``metadata``, ``model_info`` with onnxforge's
variant, accuracy and spec hash), the configuration (``model_config``, Triton's JSON
shape), repository control (``repository_index``, ``load``, ``unload``) and
``statistics``. :class:`AsyncInferenceClient` has the same methods, awaited.

A failed call raises an :class:`InferenceServerError` carrying the status code, one class
per status that means something (:mod:`onnxforge.client.errors` draws the tree), with what
to do when the cause is on the caller's side (no server at the address: "is `onnxforge
serve` running on HOST:PORT?"); an answer that cannot be decoded raises
:class:`InvalidResponse` naming the output. This package does not import ``onnx``.

The generated protocol code registers its messages in a descriptor pool of its own, so
that ``tritonclient.grpc`` can be imported in the same process (``onnxforge.protocol.pool``).
"""

from __future__ import annotations

from onnxforge.client._calls import ModelInfo, StreamResult, decode_outputs, infer_request
from onnxforge.client._clients import AsyncInferenceClient, InferenceClient
from onnxforge.client.connection import Connection
from onnxforge.client.errors import (
    DeadlineExceeded,
    InferenceServerError,
    InvalidInput,
    InvalidResponse,
    ModelNotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "AsyncInferenceClient",
    "Connection",
    "DeadlineExceeded",
    "InferenceClient",
    "InferenceServerError",
    "InvalidInput",
    "InvalidResponse",
    "ModelInfo",
    "ModelNotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StreamResult",
    "Unauthenticated",
    "Unavailable",
    "decode_outputs",
    "infer_request",
]
