"""Requests and answers of the protocol, built and read by hand, for server tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxforge.protocol.generated import inference_pb2 as pb


def raw_request(model: str, x: np.ndarray, **fields: Any) -> pb.ModelInferRequest:
    """A ModelInfer request with one FP32 input ``x`` in raw contents."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    """One FP32 output of a response, raw or typed."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name == name:
            if response.raw_output_contents:
                data = np.frombuffer(response.raw_output_contents[index], "<f4")
            else:
                data = np.asarray(tensor.contents.fp32_contents, np.float32)
            return data.reshape(tuple(tensor.shape))
    raise KeyError(name)
