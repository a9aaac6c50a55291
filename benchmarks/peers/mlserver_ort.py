"""An MLServer runtime that runs an ONNX file with ONNX Runtime (for ``serving.py``).

MLServer ships no ONNX Runtime runtime of its own (its runtimes on PyPI are scikit-learn,
XGBoost, LightGBM, MLflow, Hugging Face, ...), so this is the custom ``MLModel`` its
documentation describes: ``load`` opens an ``InferenceSession`` on the file named by the
model settings' ``parameters.uri``; ``predict`` decodes every input with MLServer's own
NumPy codec, runs the session and encodes every output the same way. MLServer's adaptive
batching (``max_batch_size``, ``max_batch_time`` in ``model-settings.json``) concatenates
requests along the first axis before ``predict`` and splits the answer after it.

Runs inside MLServer's own environment (``benchmarks/peers/setup.sh``), never onnxforge's:
``mlserver start FOLDER`` with ``"implementation": "mlserver_ort.OnnxRuntimeModel"`` and
this folder on ``PYTHONPATH``. Session options: ONNX Runtime's defaults, as a user of
``onnxruntime.InferenceSession`` gets them (``ORT_INTRA_OP_THREADS`` overrides the thread
count, for experiments).
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings, wellknown_filenames=["model.onnx"])
        options = ort.SessionOptions()
        threads = os.environ.get("ORT_INTRA_OP_THREADS")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {
            item.name: np.ascontiguousarray(NumpyCodec.decode_input(item), np.float32)
            for item in payload.inputs
        }
        results = self.session.run(self.output_names, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self.output_names, results, strict=True)
            ],
        )
