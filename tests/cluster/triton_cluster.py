"""NVIDIA's ``tritonclient.grpc`` against onnxforge on a Ray cluster, in a process of its own.

tritonclient's generated code registers the same protobuf names as
``onnxforge.protocol.generated``, so the two cannot live in one process: the test starts
this script, which imports nothing of the project, prints one JSON object and saves every
array it received; the test process does every check against ``builder.reference``.

    python tests/cluster/triton_cluster.py SCENARIO URL FOLDER

``FOLDER/x.npy`` holds the rows to send (float32, 4 columns). Scenarios:

- ``serve``: health, metadata, infer on the model and its variant, a stream with a bad
  request inside, the errors. Run against the cluster and a plain server alike.
- ``control``: unload the variant, ask each replica (``FOLDER/replicas.json``: their own
  addresses) and load it back.
- ``load``: ``THREADS`` clients, each on a connection of its own, send rows of ``x`` until
  ``FOLDER/stop`` exists; a request refused UNAVAILABLE is sent again after a back-off (up to
  ``RETRIES`` times). Every attempt is recorded: answered (its output saved) or its status.
  ``FOLDER/progress`` holds the number answered so far.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException
except ImportError as error:  # the test skips before it gets here; say why anyway
    print(f"tritonclient.grpc cannot be imported: {error}", file=sys.stderr)
    sys.exit(3)

MODEL = "tiny"
VARIANT = "tiny-fp16"
WAIT = 60.0  # seconds; a bound for a hung call, not a timing expectation
# Connections: all 16 on one of two replicas has odds 2 in 65,536 (LOAD_THREADS: fewer).
THREADS = int(os.environ.get("LOAD_THREADS", "16"))
PAUSE = float(os.environ.get("LOAD_PAUSE", "0"))  # seconds between a client's requests
RETRIES = 30  # with the back-off: about 25 s of retrying
BACKOFF = 0.02  # seconds before the first retry; doubled each time up to 1 s


def connect(url: str) -> triton.InferenceServerClient:
    """A client on a connection of its own: gRPC otherwise shares one connection among every
    channel of a process to the same address, and one connection reaches one replica."""
    return triton.InferenceServerClient(url, channel_args=[("grpc.use_local_subchannel_pool", 1)])


def tensor(rows: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    value = triton.InferInput("x", list(rows.shape), datatype)
    value.set_data_from_numpy(rows)
    return value


def status(error: InferenceServerException) -> dict[str, Any]:
    return {"status": str(error.status()), "message": error.message()}


class Run:
    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.x = np.load(folder / "x.npy")
        self.client = connect(url)
        self.results: dict[str, Any] = {}

    def step(self, name: str, action: Callable[[], Any]) -> None:
        try:
            self.results[name] = action()
        except InferenceServerException as error:
            self.results[name] = status(error)
        except Exception as error:
            self.results[name] = {
                "exception": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
            }

    def infer(
        self, name: str, model: str, rows: np.ndarray, client: Any = None, **options: Any
    ) -> dict[str, Any]:
        client = client or self.client
        result = client.infer(model, [tensor(rows)], client_timeout=WAIT, **options)
        response = result.get_response()
        np.save(self.folder / f"{name}.npy", result.as_numpy("y"))
        return {"model_name": response.model_name, "id": response.id}

    def serve(self) -> None:
        x, client = self.x, self.client
        self.step("live", client.is_server_live)
        self.step("ready", client.is_server_ready)
        self.step("model_ready", lambda: client.is_model_ready(MODEL))
        self.step("variant_ready", lambda: client.is_model_ready(VARIANT))
        self.step("unknown_ready", lambda: client.is_model_ready("nope"))
        self.step("server_metadata", lambda: client.get_server_metadata(as_json=True))
        self.step("metadata", lambda: client.get_model_metadata(MODEL, as_json=True))
        self.step("variant_metadata", lambda: client.get_model_metadata(VARIANT, as_json=True))
        self.step("index", lambda: client.get_model_repository_index(as_json=True))
        # Connections of their own: the kernel spreads them over the replicas sharing the port.
        for k in range(4):
            fresh = connect(self.url)
            self.step(f"infer{k}", lambda f=fresh: self.infer("infer", MODEL, x, f))
            self.step(f"variant{k}", lambda f=fresh: self.infer("variant", VARIANT, x, f))
            fresh.close()
        self.step("with_id", lambda: self.infer("with_id", MODEL, x[:2], request_id="r-7"))
        self.step("stream", self.stream)
        self.step("unknown_model", lambda: client.infer("nope", [tensor(x)]))
        self.step("unknown_version", lambda: client.infer(MODEL, [tensor(x)], model_version="7"))
        self.step("wrong_shape", lambda: client.infer(MODEL, [tensor(x[:, :3].copy())]))
        self.step(
            "wrong_datatype", lambda: client.infer(MODEL, [tensor(x.astype(np.float64), "FP64")])
        )
        wrong = [triton.InferRequestedOutput("logits")]
        self.step("unknown_output", lambda: client.infer(MODEL, [tensor(x)], outputs=wrong))
        self.step("metadata_unknown", lambda: client.get_model_metadata("nope"))
        self.step("model_config", lambda: client.get_model_config(MODEL, as_json=True))
        self.step("after_errors", lambda: self.infer("after_errors", MODEL, x[:3]))
        self.step("statistics", lambda: client.get_inference_statistics(MODEL, as_json=True))

    def stream(self) -> list[dict[str, Any]]:
        """Three good requests with a bad one between them, over one ModelStreamInfer."""
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for k in range(3):
                rows = self.x[: k + 1]
                self.client.async_stream_infer(MODEL, [tensor(rows)], request_id=f"s{k}")
                if k == 0:
                    self.client.async_stream_infer("nope", [tensor(rows)], request_id="s-bad")
            got = []
            for _ in range(4):
                result, error = answers.get(timeout=WAIT)
                if error is not None:
                    got.append(status(error))
                else:
                    response = result.get_response()
                    np.save(self.folder / f"stream.{response.id}.npy", result.as_numpy("y"))
                    got.append({"id": response.id, "rows": len(result.as_numpy("y"))})
            return got
        finally:
            self.client.stop_stream()

    def control(self) -> None:
        """Unload the variant through the public port; ask each replica; load it back."""
        replicas = json.loads((self.folder / "replicas.json").read_text())
        clients = [connect(address) for address in replicas]

        def each(what: str, model: str) -> list[Any]:
            found = []
            for k, replica in enumerate(clients):
                try:
                    if what == "ready":
                        found.append(replica.is_model_ready(model))
                    else:
                        found.append(self.infer(f"{what}.{k}", model, self.x, replica))
                except InferenceServerException as error:
                    found.append(status(error))
            return found

        client = self.client
        self.step("before", lambda: each("infer_before", VARIANT))
        self.step("unload", lambda: client.unload_model(VARIANT))
        self.step("ready_after_unload", lambda: each("ready", VARIANT))
        self.step("infer_after_unload", lambda: each("infer_after_unload", VARIANT))
        self.step("model_still_served", lambda: each("model_after_unload", MODEL))
        self.step("index_after_unload", lambda: client.get_model_repository_index(as_json=True))
        self.step("load", lambda: client.load_model(VARIANT))
        self.step("ready_after_load", lambda: each("ready", VARIANT))
        self.step("infer_after_load", lambda: each("infer_after_load", VARIANT))
        self.step("load_unknown", lambda: client.load_model("no-such-model"))
        self.step("unload_unknown", lambda: client.unload_model("no-such-model"))
        for replica in clients:
            replica.close()

    def load(self) -> None:
        stop = self.folder / "stop"
        answered = [0] * THREADS
        records: list[list[dict[str, Any]]] = [[] for _ in range(THREADS)]
        outputs: dict[str, np.ndarray] = {}
        lock = threading.Lock()

        def client_loop(index: int) -> None:
            client = connect(self.url)
            sent = 0
            while not stop.exists():
                first = (index * 7 + sent) % (len(self.x) - 4)
                rows = self.x[first : first + 1 + sent % 4]
                attempts: list[str] = []
                for attempt in range(RETRIES):
                    try:
                        result = client.infer(MODEL, [tensor(rows)], client_timeout=WAIT)
                    except InferenceServerException as error:
                        attempts.append(str(error.status()))
                        if str(error.status()) != "StatusCode.UNAVAILABLE":
                            break  # not retryable: recorded as it came
                        time.sleep(min(BACKOFF * 2**attempt, 1.0))  # as a client should
                        continue
                    except Exception as error:  # recorded; the test counts it as lost
                        attempts.append(f"{type(error).__name__}: {error}")
                        break
                    attempts.append("answered")
                    with lock:
                        outputs[f"{index}.{sent}"] = result.as_numpy("y")
                        answered[index] += 1
                        (self.folder / "progress").write_text(str(sum(answered)))
                    break
                records[index].append({"first": first, "rows": len(rows), "attempts": attempts})
                sent += 1
                time.sleep(PAUSE)
            client.close()

        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        np.savez(self.folder / "outputs.npz", **outputs)
        self.results["requests"] = [
            {"key": f"{index}.{sent}", **record}
            for index, part in enumerate(records)
            for sent, record in enumerate(part)
        ]


def main(argv: list[str]) -> int:
    scenario, url, folder = argv[1], argv[2], Path(argv[3])
    run = Run(url, folder)
    try:
        getattr(run, scenario)()
    finally:
        run.client.close()
    print(json.dumps(run.results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
