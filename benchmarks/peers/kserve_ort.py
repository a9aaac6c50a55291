"""KServe's ModelServer running ONNX files with ONNX Runtime (for ``serving.py``).

    python kserve_ort.py --model NAME=PATH [--model NAME=PATH ...] --grpc_port P --http_port Q

A ``kserve.Model`` per file: ``load`` opens an ``InferenceSession``; ``predict`` reads every
input with KServe's own ``InferInput.as_numpy`` (raw_input_contents as sent), runs the
session and answers binary (raw_output_contents) outputs. ``predict`` is a plain method, as
in KServe's custom-model examples, so the ModelServer calls it on its event loop; KServe has
no dynamic batching of its own. Every other option is KServe's (its argument parser reads
``--grpc_port``, ``--http_port``, ``--workers``, ``--enable_latency_logging`` and the rest
from the same command line). Session options: ONNX Runtime's defaults
(``ORT_INTRA_OP_THREADS`` overrides the thread count, for experiments).

Runs inside KServe's own environment (``benchmarks/peers/setup.sh``), never onnxforge's.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxRuntimeModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.session: Any = None
        self.output_names: list[str] = []

    def load(self) -> bool:
        options = ort.SessionOptions()
        threads = os.environ.get("ORT_INTRA_OP_THREADS")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        feed = {item.name: item.as_numpy() for item in payload.inputs}
        outputs = []
        for name, value in zip(
            self.output_names, self.session.run(self.output_names, feed), strict=True
        ):
            output = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
            output.set_data_from_numpy(value, binary_data=True)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH")
    args, _ = parser.parse_known_args()  # the rest is KServe's own
    models = []
    for given in args.model:
        name, _, path = given.partition("=")
        model = OnnxRuntimeModel(name, path)
        model.load()
        models.append(model)
    kserve.ModelServer().start(models)


if __name__ == "__main__":
    main()
