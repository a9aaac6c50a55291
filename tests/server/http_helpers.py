"""Plain HTTP calls for the HTTP/REST tests: http.client, no status raised, bodies by hand.

Written from the KServe v2 REST and Triton binary-tensor documents, not from the server's
codec, so that the tests check the server against the protocol rather than against itself.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import yaml

from tests.helpers import mlp_document

HEADER_LENGTH = "Inference-Header-Content-Length"
LAYERS = [
    {"name": "hidden", "type": "dense", "units": 3, "activation": "relu"},
    {"type": "dense", "units": 2, "activation": "softmax"},
]


def write_model(repository: Path, name: str, **overrides: object) -> Path:
    """A small model (x: 4 -> hidden: 3 -> y: 2, hidden exposed) as a spec in ``repository``."""
    document = mlp_document(name=name, layers=LAYERS, expose=["hidden"], **overrides)
    (repository / name).mkdir(parents=True)
    path = repository / name / "spec.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "FP16": "<f2"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The KServe v2 error body's message (the body must be exactly that object)."""
        document = self.json()
        assert set(document) == {"error"}, document
        assert isinstance(document["error"], str)
        return document["error"]


def call(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Answer:
    """One request on a connection of its own; any status is returned, not raised."""
    where = urlsplit(url)
    assert where.hostname is not None and where.port is not None
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(
            response.status,
            {key.lower(): value for key, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def json_tensor(name: str, array: np.ndarray, nested: bool = False) -> dict[str, Any]:
    data = array.tolist() if nested else array.ravel().tolist()
    kind = {"f": "FP", "i": "INT"}[array.dtype.kind] + str(array.dtype.itemsize * 8)
    return {"name": name, "shape": list(array.shape), "datatype": kind, "data": data}


def binary_body(
    inputs: dict[str, np.ndarray], document: dict[str, Any] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A request whose inputs all travel as binary data after the JSON, with its headers."""
    document = dict(document or {})
    tensors, chunks = [], []
    for name, array in inputs.items():
        raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        kind = {"f": "FP", "i": "INT"}[array.dtype.kind] + str(array.dtype.itemsize * 8)
        tensors.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": kind,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    document["inputs"] = tensors
    text = json.dumps(document).encode()
    return text + b"".join(chunks), {HEADER_LENGTH: str(len(text))}


def outputs_of(answer: Answer) -> dict[str, np.ndarray]:
    """The output arrays of an inference answer, JSON ``data`` or binary data alike."""
    assert answer.status == 200, (answer.status, answer.body[:500])
    length = answer.headers.get(HEADER_LENGTH.lower())
    split = int(length) if length is not None else len(answer.body)
    document = json.loads(answer.body[:split])
    binary = answer.body[split:]
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in document["outputs"]:
        dtype = np.dtype(DTYPES[tensor["datatype"]])
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[tensor["name"]] = np.asarray(tensor["data"], dtype=dtype).reshape(
                tensor["shape"]
            )
        else:
            chunk = binary[offset : offset + size]
            offset += size
            arrays[tensor["name"]] = np.frombuffer(chunk, dtype=dtype).reshape(tensor["shape"])
    assert offset == len(binary), "binary data beyond the outputs that declare it"
    return arrays
