"""NVIDIA's ``tritonclient.grpc`` against a running onnxforge server, in a process of its own.

It imports nothing of the project, so that what it sees is what any tritonclient user sees
(both in one process: ``test_coexistence.py``); ``test_interop.py`` runs the server and
starts this script.

    python tests/server/interop_tritonclient.py ADDRESS FOLDER {serve,control}

Reads ``FOLDER/x.npy`` (float32 rows of 64), saves every output it receives as
``FOLDER/<step>.<output>.npy`` and prints one JSON object to stdout: for each step, what came
back, or ``{"status": ..., "message": ...}`` for an ``InferenceServerException`` and
``{"exception": ...}`` for anything else. A step that fails never stops the others; the
test process does every check.

``serve`` only reads and infers (the shared server of the test session); ``control`` unloads
and reloads a model (a server of its own).
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    import tritonclient.grpc as triton
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.utils import InferenceServerException
except ImportError as error:  # the test skips before it gets here; say why anyway
    print(f"tritonclient.grpc cannot be imported: {error}", file=sys.stderr)
    sys.exit(3)

MODEL = "digits-mlp"
WAIT = 60.0  # seconds; a bound for a hung call, not a timing expectation


class Run:
    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.x = np.load(folder / "x.npy")
        self.client = triton.InferenceServerClient(url)
        self.results: dict[str, Any] = {}
        # Requests this script sent to MODEL, for the statistics check.
        self.sent = {"success": 0, "fail": 0, "rows": 0}

    def step(self, name: str, action: Callable[[], Any]) -> None:
        try:
            self.results[name] = action()
        except InferenceServerException as error:
            self.results[name] = {"status": error.status(), "message": error.message()}
        except Exception as error:
            self.results[name] = {
                "exception": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
            }

    def tensor(self, rows: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
        tensor = triton.InferInput("x", list(rows.shape), datatype)
        tensor.set_data_from_numpy(rows)
        return tensor

    def keep(self, name: str, result: Any) -> dict[str, Any]:
        """Save a result's arrays; describe it for the JSON."""
        response = result.get_response()
        outputs = []
        for tensor in response.outputs:
            array = result.as_numpy(tensor.name)
            np.save(self.folder / f"{name}.{tensor.name}.npy", array)
            outputs.append(
                {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
            )
        return {
            "model_name": response.model_name,
            "model_version": response.model_version,
            "id": response.id,
            "outputs": outputs,
        }

    def infer(self, name: str, rows: np.ndarray, **options: Any) -> dict[str, Any]:
        result = self.client.infer(MODEL, [self.tensor(rows)], client_timeout=WAIT, **options)
        self.sent["success"] += 1
        self.sent["rows"] += len(rows)
        return self.keep(name, result)

    def failing(
        self,
        rows: np.ndarray,
        datatype: str = "FP32",
        model: str = MODEL,
        counted: bool = True,
        **options: Any,
    ) -> None:
        """A request the server must refuse; ``counted``: as a failure of MODEL's."""
        self.sent["fail"] += counted
        self.client.infer(model, [self.tensor(rows, datatype)], client_timeout=WAIT, **options)

    # ------------------------------------------------------------------ scenarios

    def serve(self) -> None:
        x, client = self.x, self.client
        self.step("stats_before", lambda: client.get_inference_statistics(MODEL, as_json=True))
        self.step("live", client.is_server_live)
        self.step("ready", client.is_server_ready)
        self.step("model_ready", lambda: client.is_model_ready(MODEL))
        self.step("model_ready_unknown", lambda: client.is_model_ready("nope"))
        self.step("server_metadata", lambda: client.get_server_metadata(as_json=True))
        self.step("model_metadata", lambda: client.get_model_metadata(MODEL, as_json=True))
        self.step("repository_index", lambda: client.get_model_repository_index(as_json=True))

        self.step("infer_all", lambda: self.infer("infer_all", x, request_id="all"))
        both = [triton.InferRequestedOutput("hidden"), triton.InferRequestedOutput("probabilities")]
        self.step("infer_both", lambda: self.infer("infer_both", x, outputs=both))
        one = [triton.InferRequestedOutput("hidden")]
        self.step("infer_one", lambda: self.infer("infer_one", x[:1], outputs=one))
        self.step("infer_gzip", lambda: self.infer("infer_gzip", x, compression_algorithm="gzip"))
        self.step("async_infer", self.async_infer)
        self.step("stream", self.stream)
        self.step("aio", lambda: asyncio.run(asyncio.wait_for(self.aio(), WAIT)))

        self.step("unknown_model", lambda: self.failing(x, model="nope", counted=False))
        # NOT_FOUND before a model version is reached: no statistics to count it in.
        self.step("unknown_version", lambda: self.failing(x, model_version="7", counted=False))
        self.step("wrong_shape", lambda: self.failing(x[:, :10].copy()))
        self.step("wrong_datatype", lambda: self.failing(x.astype(np.float64), "FP64"))
        unknown = [triton.InferRequestedOutput("logits")]
        self.step("unknown_output", lambda: self.failing(x, outputs=unknown))
        self.step("metadata_unknown", lambda: client.get_model_metadata("nope"))
        self.step("model_config", lambda: client.get_model_config(MODEL, as_json=True))
        self.step("model_config_unknown", lambda: client.get_model_config("nope"))
        self.step("after_errors", lambda: self.infer("after_errors", x[:2]))

        self.step("stats_after", lambda: client.get_inference_statistics(MODEL, as_json=True))
        self.results["sent"] = self.sent

    def async_infer(self) -> dict[str, Any]:
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.async_infer(
            MODEL,
            [self.tensor(self.x)],
            callback=lambda result, error: answers.put((result, error)),
            request_id="async-1",
            client_timeout=WAIT,
        )
        result, error = answers.get(timeout=WAIT)
        if error is not None:
            raise error
        self.sent["success"] += 1
        self.sent["rows"] += len(self.x)
        return self.keep("async_infer", result)

    def stream(self) -> list[dict[str, Any]]:
        """Three good requests with a bad one between them, over one ModelStreamInfer."""
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for k in range(3):
                rows = self.x[: k + 1]
                self.client.async_stream_infer(MODEL, [self.tensor(rows)], request_id=f"s{k}")
                self.sent["success"] += 1
                self.sent["rows"] += len(rows)
                if k == 0:
                    self.client.async_stream_infer("nope", [self.tensor(rows)], request_id="s-bad")
            got = []
            for index in range(4):
                result, error = answers.get(timeout=WAIT)
                if error is not None:
                    got.append({"status": error.status(), "message": error.message()})
                else:
                    got.append(self.keep(f"stream{index}", result))
            return got
        finally:
            self.client.stop_stream()

    async def aio(self) -> dict[str, Any]:
        client = triton_aio.InferenceServerClient(self.url)
        try:
            out: dict[str, Any] = {
                "live": await client.is_server_live(),
                "model_ready": await client.is_model_ready(MODEL),
            }
            result = await client.infer(MODEL, [self.tensor(self.x)], request_id="aio-1")
            self.sent["success"] += 1
            self.sent["rows"] += len(self.x)
            out["infer"] = self.keep("aio_infer", result)

            async def requests() -> Any:
                for k in range(2):
                    rows = self.x[: k + 1]
                    self.sent["success"] += 1
                    self.sent["rows"] += len(rows)
                    yield {
                        "model_name": MODEL,
                        "inputs": [self.tensor(rows)],
                        "request_id": f"a{k}",
                    }

            out["stream"] = []
            async for result, error in client.stream_infer(requests()):
                if error is not None:
                    out["stream"].append({"status": error.status(), "message": error.message()})
                else:
                    out["stream"].append(self.keep(f"aio_stream{len(out['stream'])}", result))
            return out
        finally:
            await client.close()

    def control(self) -> None:
        """Unload a model, see it gone, load it back, see it serve."""
        client, x, name = self.client, self.x, "digits-mlp-fp16"
        self.step("unload", lambda: client.unload_model(name))
        self.step("ready_after_unload", lambda: client.is_model_ready(name))
        self.step("index_after_unload", lambda: client.get_model_repository_index(as_json=True))
        self.step(
            "infer_after_unload",
            lambda: client.infer(name, [self.tensor(x)], client_timeout=WAIT),
        )
        self.step("load", lambda: client.load_model(name))
        self.step("ready_after_load", lambda: client.is_model_ready(name))
        self.step(
            "infer_after_load",
            lambda: self.keep(
                "infer_after_load", client.infer(name, [self.tensor(x)], client_timeout=WAIT)
            ),
        )
        self.step("load_unknown", lambda: client.load_model("no-such-model"))
        self.step("unload_unknown", lambda: client.unload_model("no-such-model"))


def main(argv: list[str]) -> int:
    url, folder, scenario = argv[1], Path(argv[2]), argv[3]
    run = Run(url, folder)
    try:
        getattr(run, scenario)()
    finally:
        run.client.close()
    print(json.dumps(run.results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
