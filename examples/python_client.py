"""Classify digits with a running ``onnxforge serve``, using onnxforge's own Python client.

Start a server in one terminal, then run this script in another::

    onnxforge serve                                   # gRPC on 127.0.0.1:8001
    python examples/python_client.py                  # or: --url HOST:PORT --rows 32

It asks the server for the model's metadata, sends a few held-out rows of
``models/digits-mlp/heldout.npz`` (8x8 images as 64 floats, with their true labels), prints
the predicted and true label of each row and the accuracy, shows the typed error of a
request for a model the server does not have, then sends the same rows again with the
asyncio client, a few requests at once.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np

from onnxforge.client import AsyncInferenceClient, InferenceClient, ModelNotFound

HELDOUT = Path(__file__).resolve().parent.parent / "models" / "digits-mlp" / "heldout.npz"


def report(predicted: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
    """One line per row, then the accuracy."""
    for row, (guess, truth) in enumerate(zip(predicted, labels, strict=True)):
        mark = "" if guess == truth else "  <- wrong"
        print(f"row {row:3d}: predicted {guess}  true {truth}  (p={probabilities[row]:.6f}){mark}")
    correct = int((predicted == labels).sum())
    print(f"accuracy: {correct}/{len(labels)} = {correct / len(labels):.4f}")


def sync_example(url: str, model: str, x: np.ndarray, y: np.ndarray) -> None:
    # The client is a context manager: the gRPC channel is closed on the way out.
    with InferenceClient(url) as client:
        print(f"server live: {client.live()}, model {model} ready: {client.ready(model)}")

        # Metadata: the names, datatypes and shapes (-1 = any batch size) the model takes,
        # with what onnxforge adds: the variant (fp32, fp16, int8-...) and the spec's hash.
        info = client.model_info(model)
        print(f"variant: {info.variant}")
        metadata = info.metadata
        for tensor in metadata.inputs:
            print(f"input  {tensor.name}: {tensor.datatype} {list(tensor.shape)}")
        for tensor in metadata.outputs:
            print(f"output {tensor.name}: {tensor.datatype} {list(tensor.shape)}")

        # One request for all rows. Inputs and outputs are NumPy arrays keyed by name;
        # ask for "probabilities" only (the model also exposes its "hidden" layer).
        outputs = client.infer(model, {"x": x}, outputs=["probabilities"])
        probabilities = outputs["probabilities"]  # shape (rows, 10)
        predicted = probabilities.argmax(axis=1)
        report(predicted, y, probabilities.max(axis=1))

        # A failed call raises a typed error carrying the status code (here NOT_FOUND).
        try:
            client.infer("no-such-model", {"x": x})
        except ModelNotFound as error:
            print(f"no-such-model: {error.code}")


async def async_example(url: str, model: str, x: np.ndarray, y: np.ndarray) -> None:
    # The asyncio twin has the same methods, awaited. Send the rows as several requests at
    # once (4 rows each); the server may batch them together.
    async with AsyncInferenceClient(url) as client:
        chunks = [x[start : start + 4] for start in range(0, len(x), 4)]
        answers = await asyncio.gather(*(client.infer(model, {"x": chunk}) for chunk in chunks))
    probabilities = np.concatenate([answer["probabilities"] for answer in answers])
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
