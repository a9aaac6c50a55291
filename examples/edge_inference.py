"""Run an exported ``.ort`` model with plain ONNX Runtime: no server, no onnxforge.

On the build machine, export a model (any variant) for the device::

    onnxforge export-edge digits-mlp-int8-static --out edge/

and run it with plain ONNX Runtime (on the device, only this file, ``numpy`` and
``onnxruntime`` are needed)::

    python examples/edge_inference.py edge/     # rows of models/digits-mlp/heldout.npz
    python examples/edge_inference.py edge/ --data rows.npy --rows 8 --save outputs.npz

It reads ``manifest.json`` for the file name and the input's name, dtype and shape, checks
the file's sha256, runs the rows and prints each row's predicted class (with the true
label and the accuracy when the data has labels ``y``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

HELDOUT = Path(__file__).resolve().parent.parent / "models" / "digits-mlp" / "heldout.npz"


def load_rows(path: Path, count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows from a .npy file, or x (and labels y, if present) from an .npz file."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            labels = data["y"][:count] if "y" in data else None
            return data["x"][:count], labels
    return np.load(path)[:count], None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder",
        type=Path,
        nargs="?",
        default=Path("edge"),
        help="what `onnxforge export-edge --out` wrote",
    )
    parser.add_argument("--data", type=Path, default=HELDOUT, help=".npy rows or .npz (x, y)")
    parser.add_argument("--rows", type=int, default=16, help="how many rows to run")
    parser.add_argument("--save", type=Path, help="save every output to this .npz file")
    args = parser.parse_args()

    # The manifest says what the model takes, so this script works for any exported model.
    manifest = json.loads((args.folder / "manifest.json").read_text())
    model_file = args.folder / manifest["files"]["ort"]["file"]
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    if digest != manifest["files"]["ort"]["sha256"]:
        raise SystemExit(f"{model_file}: sha256 differs from manifest.json (a damaged copy?)")
    [model_input] = manifest["inputs"]  # name, dtype, shape with -1 for the batch
    outputs = [output["name"] for output in manifest["outputs"]]  # the model output first
    print(
        f"model {manifest['model']} ({manifest['variant']}), file {model_file.name} "
        f"({manifest['files']['ort']['bytes']:,} bytes, sha256 ok)"
    )
    print(
        f"input {model_input['name']}: {model_input['dtype']} {model_input['shape']}, "
        f"outputs {', '.join(outputs)}"
    )

    options = ort.SessionOptions()
    if manifest["onnxruntime"]["optimization_style"] == "runtime":
        # Files exported with --optimization-style runtime carry optimizations to replay.
        options.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    # An .ort file loads like an .onnx file; a minimal ONNX Runtime build loads only .ort.
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    x, labels = load_rows(args.data, args.rows)
    x = x.astype(model_input["dtype"])
    expected = tuple(model_input["shape"][1:])
    if x.shape[1:] != expected:
        raise SystemExit(f"{args.data}: rows of shape {x.shape[1:]}, the model takes {expected}")

    results = dict(zip(outputs, session.run(outputs, {model_input["name"]: x}), strict=True))
    scores = results[outputs[0]]  # (rows, classes)
    predicted = scores.argmax(axis=1)
    for row, guess in enumerate(predicted):
        truth = "" if labels is None else f"  true {labels[row]}"
        mark = "" if labels is None or guess == labels[row] else "  <- wrong"
        print(f"row {row:3d}: predicted {guess}{truth}  (p={scores[row, guess]:.6f}){mark}")
    if labels is not None:
        correct = int((predicted == labels).sum())
        print(f"accuracy: {correct}/{len(labels)} = {correct / len(labels):.4f}")
    if args.save:
        np.savez(args.save, **results)
        print(f"saved {', '.join(outputs)} to {args.save}")


if __name__ == "__main__":
    main()
