"""tritonclient.grpc and onnxforge.client in one process, against one running server.

    python tests/server/coexist_clients.py {triton-first,onnxforge-first} ADDRESS FOLDER

Imports the two clients in the order given (each order once failed with "duplicate
symbol 'inference.ServerLiveRequest'"), reads ``FOLDER/x.npy``, infers with each client
and saves the outputs as ``FOLDER/<client>.<output>.npy``, then prints one JSON object:
both clients' model configurations and what each named the model. A fresh process per
order, so that the test suite's own imports cannot decide the outcome.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "digits-mlp"


def main(order: str, address: str, folder: Path) -> dict[str, Any]:
    names = ["tritonclient.grpc", "onnxforge.client"]
    if order == "onnxforge-first":
        names.reverse()
    imported = {name: importlib.import_module(name) for name in names}  # in this order
    triton, ours = imported["tritonclient.grpc"], imported["onnxforge.client"]

    x = np.load(folder / "x.npy")
    found: dict[str, Any] = {}
    with ours.InferenceClient(address) as client:
        for name, array in client.infer(MODEL, {"x": x}).items():
            np.save(folder / f"onnxforge.{name}.npy", array)
        found["onnxforge_config"] = client.model_config(MODEL)
        found["onnxforge_variant"] = client.model_info(MODEL).variant
    theirs = triton.InferenceServerClient(address)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    answer = theirs.infer(MODEL, [tensor])
    for output in answer.get_response(as_json=True)["outputs"]:
        np.save(folder / f"triton.{output['name']}.npy", answer.as_numpy(output["name"]))
    found["triton_config"] = theirs.get_model_config(MODEL, as_json=True)["config"]
    found["triton_live"] = theirs.is_server_live()
    theirs.close()
    return found


if __name__ == "__main__":
    order, address, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    print(json.dumps(main(order, address, folder)))
