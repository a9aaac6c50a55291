"""Classify digits with a running ``onnxforge serve``, using NVIDIA's ``tritonclient.grpc``.

onnxforge speaks the KServe v2 / Open Inference Protocol, so Triton's own client works
unchanged; this script imports nothing from onnxforge. Install the client and run::

    pip install 'tritonclient>=2.73,<3'               # without the [grpc] extra, see below
    onnxforge serve                                   # in another terminal
    python examples/tritonclient_client.py            # or: --url HOST:PORT --rows 32

(``tritonclient[grpc]`` pins an old protobuf; onnxforge already installs grpcio and
protobuf, so plain ``tritonclient`` is enough. Do not import tritonclient and
``onnxforge.client`` in one process: both register the protocol's message names.)

It prints the model's metadata, the predicted and true label of a few held-out rows of
``models/digits-mlp/heldout.npz`` and the accuracy, then repeats with the asyncio client.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio

HELDOUT = Path(__file__).resolve().parent.parent / "models" / "digits-mlp" / "heldout.npz"


def make_inputs(x: np.ndarray) -> list[grpcclient.InferInput]:
    # One InferInput per model input: name, shape and protocol datatype, then the data.
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def report(predicted: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
    """One line per row, then the accuracy."""
    for row, (guess, truth) in enumerate(zip(predicted, labels, strict=True)):
        mark = "" if guess == truth else "  <- wrong"
        print(f"row {row:3d}: predicted {guess}  true {truth}  (p={probabilities[row]:.6f}){mark}")
    correct = int((predicted == labels).sum())
    print(f"accuracy: {correct}/{len(labels)} = {correct / len(labels):.4f}")


def sync_example(url: str, model: str, x: np.ndarray, y: np.ndarray) -> None:
    client = grpcclient.InferenceServerClient(url)
    try:
        live, ready = client.is_server_live(), client.is_model_ready(model)
        print(f"server live: {live}, model {model} ready: {ready}")

        # The metadata: names, datatypes and shapes (-1 = any batch size) of the tensors.
        metadata = client.get_model_metadata(model)
        for tensor in metadata.inputs:
            print(f"input  {tensor.name}: {tensor.datatype} {list(tensor.shape)}")
        for tensor in metadata.outputs:
            print(f"output {tensor.name}: {tensor.datatype} {list(tensor.shape)}")

        # Ask for "probabilities" only (the model also exposes its "hidden" layer).
        outputs = [grpcclient.InferRequestedOutput("probabilities")]
        result = client.infer(model, make_inputs(x), outputs=outputs)
        probabilities = result.as_numpy("probabilities")  # shape (rows, 10)
        report(probabilities.argmax(axis=1), y, probabilities.max(axis=1))
    finally:
        client.close()


async def async_example(url: str, model: str, x: np.ndarray, y: np.ndarray) -> None:
    # The asyncio client: several requests (4 rows each) in flight at once.
    client = grpcclient_aio.InferenceServerClient(url)
    try:
        chunks = [x[start : start + 4] for start in range(0, len(x), 4)]
        results = await asyncio.gather(
            *(client.infer(model, make_inputs(chunk)) for chunk in chunks)
        )
    finally:
        await client.close()
    probabilities = np.concatenate([result.as_numpy("probabilities") for result in results])
    correct = int((probabilities.argmax(axis=1) == y).sum())
    print(f"async: {len(chunks)} concurrent requests")
    print(f"async accuracy: {correct}/{len(y)} = {correct / len(y):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="server address HOST:PORT")
    parser.add_argument("--model", default="digits-mlp", help="model name")
    parser.add_argument("--data", type=Path, default=HELDOUT, help=".npz with x and y")
    parser.add_argument("--rows", type=int, default=16, help="how many rows to send")
    args = parser.parse_args()

    with np.load(args.data) as data:
        x = data["x"][: args.rows].astype(np.float32)  # (rows, 64)
        y = data["y"][: args.rows]  # (rows,) true labels
    sync_example(args.url, args.model, x, y)
    asyncio.run(async_example(args.url, args.model, x, y))


if __name__ == "__main__":
    main()
