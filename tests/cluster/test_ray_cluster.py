"""``onnxforge serve --ray`` on a real two-node Ray cluster, through an unmodified tritonclient.

One cluster for the module (a head and a worker node, ``ray.cluster_utils.Cluster``: real
raylets and a GCS, on this machine) and one ``serve --ray`` process with two replicas, one
per node, serving a repository of a model and its fp16 variant that ``onnxforge build``
wrote. tritonclient runs in a subprocess (``triton_cluster.py``: its protos collide with
``onnxforge.protocol.generated``); every answer is checked here, against
``builder.reference`` and against what a plain ``onnxforge serve`` answers to the same
script. Replicas are also reached one by one on their own control ports, with the internal
token where a call must stay at that replica.

No assertion depends on timing; waits poll the observed state within a bound.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from onnxforge.bench.process import SERVING as PLAIN_SERVING
from onnxforge.bench.process import ServerError, ServerProcess
from onnxforge.builder import load_spec, reference
from onnxforge.client import InferenceClient
from onnxforge.cluster import SERVING
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server.peers import PEER_HEADER
from onnxforge.server.security import INTERNAL_TOKEN_ENV
from tests.conftest import REPO_ROOT
from tests.helpers import mlp_document, wait_until

SCRIPT = Path(__file__).with_name("triton_cluster.py")
TOKEN = "cluster-test-internal-token"
WAIT = 60.0  # bound on every wait for the cluster; no test depends on timing
# "replica 1: pid ..." when started, "replica 1 is back (restart 2): pid ..." after a restart.
REPLICA = re.compile(
    r"replica (\d+)(?: is back \(restart \d+\)| joined)?: pid (\d+) on node (\w+), "
    r"control ([\d.]+:\d+)"
)

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="Ray is not installed (pip install -e '.[ray]'; the test extra includes it)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("tritonclient") is None,
        reason="tritonclient is not installed (pip install -e '.[test]')",
    ),
    # Ray's own modules warn about their dependencies on import; not ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@dataclass
class Replica:
    index: int
    pid: int
    node: str
    control: str  # its own address: the server alone, not shared with the others


@dataclass
class Served:
    """The cluster, the ``serve --ray`` process and a plain server of the same repository."""

    cluster: Any
    ray: ServerProcess
    plain: ServerProcess
    repository: Path
    x: np.ndarray

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ray.port}"

    def replicas(self) -> dict[int, Replica]:
        return replicas_of(self.ray)


def replicas_of(server: ServerProcess) -> dict[int, Replica]:
    """Each replica's current process, from the driver's lines (the latest wins)."""
    found: dict[int, Replica] = {}
    for line in list(server.lines):
        match = REPLICA.search(line)
        if match:
            index, pid, node, control = match.groups()
            found[int(index)] = Replica(int(index), int(pid), node, control)
    return found


def build_repository(folder: Path) -> Path:
    """The model and its fp16 variant, built by ``onnxforge build``; the spec served beside."""
    repository = folder / "repository"
    spec = repository / "tiny" / "spec.yaml"
    spec.parent.mkdir(parents=True)
    spec.write_text(yaml.safe_dump(mlp_document(name="tiny", variants=["fp32", "fp16"])))
    python("-m", "onnxforge", "build", str(spec), "--repository", str(repository))
    return repository


def python(*args: str) -> str:
    """``python ARGS...`` from the repository's root (bounded); its stdout."""
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from ray.cluster_utils import Cluster

    folder = tmp_path_factory.mktemp("cluster")
    repository = build_repository(folder)
    x = np.random.default_rng(13).normal(size=(40, 4)).astype(np.float32)
    try:
        cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={
                "num_cpus": 2,
                "include_dashboard": False,
                # A node killed outright is declared dead after ~1 s, not Ray's ~15 s.
                "_system_config": {
                    "health_check_period_ms": 500,
                    "health_check_failure_threshold": 2,
                },
            },
        )
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes(timeout=WAIT)
    except Exception as error:  # no Ray here (sandbox, no shared memory...): say why
        pytest.skip(f"a local Ray cluster cannot start here: {type(error).__name__}: {error}")
    previous = os.environ.get(INTERNAL_TOKEN_ENV)
    os.environ[INTERNAL_TOKEN_ENV] = TOKEN  # so that a test can talk to one replica alone
    ray_server = plain = None
    try:
        ray_server = ServerProcess(
            repository,
            "--ray",
            cluster.address,
            "--replicas",
            "2",
            threads=1,
            metrics=False,
            http=True,  # a free port, shared by the replicas as the gRPC one is
            pattern=SERVING,
            cwd=REPO_ROOT,
            start_seconds=120,
        )
        plain = ServerProcess(
            repository, threads=1, metrics=False, pattern=PLAIN_SERVING, cwd=REPO_ROOT
        )
        yield Served(cluster, ray_server, plain, repository, x)
    except ServerError as error:
        pytest.fail(str(error))
    finally:
        for process in (ray_server, plain):
            if process is not None:
                process.close()
        if previous is None:
            os.environ.pop(INTERNAL_TOKEN_ENV, None)
        else:
            os.environ[INTERNAL_TOKEN_ENV] = previous
        cluster.shutdown()


def run_script(scenario: str, url: str, folder: Path, x: np.ndarray) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    results: dict[str, Any] = json.loads(python(str(SCRIPT), scenario, url, str(folder)))
    broken = {k: v for k, v in results.items() if isinstance(v, dict) and "exception" in v}
    assert not broken, json.dumps(broken, indent=1)
    return results


def expected(repository: Path, x: np.ndarray) -> np.ndarray:
    return reference.forward(load_spec(repository / "tiny" / "spec.yaml"), x)


def alone(control: str, request: Any, method: str) -> Any:
    """A call that stays at one replica: marked as passed on, with the internal token."""
    with grpc.insecure_channel(control) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = ((PEER_HEADER, "1"), ("authorization", f"Bearer {TOKEN}"))
        return getattr(stub, method)(request, metadata=metadata, timeout=WAIT)


def served_rows(control: str) -> int:
    """Rows of "tiny" this replica alone has answered."""
    answer = alone(control, pb.ModelStatisticsRequest(name="tiny"), "ModelStatistics")
    return sum(stats.inference_count for stats in answer.model_stats)


# ------------------------------------------------------------------ placement, answers


@pytest.fixture(scope="module")
def scenario(served: Served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("serve")
    return {
        "ray": run_script("serve", served.url, folder / "ray", served.x),
        "plain": run_script("serve", served.plain.url, folder / "plain", served.x),
        "folder": folder,
    }


def test_one_replica_per_node_sharing_one_port(served: Served) -> None:
    replicas = served.replicas()
    assert sorted(replicas) == [0, 1]
    assert len({replica.node for replica in replicas.values()}) == 2
    assert len({replica.control for replica in replicas.values()}) == 2
    for replica in replicas.values():  # each answers on its own, and shares the public port
        answer = alone(replica.control, pb.ServerReadyRequest(), "ServerReady")
        assert answer.ready is True
    assert "with 2 replica(s) on 2 node(s)" in served.ray.output


def test_every_status_and_metadata_as_on_a_single_server(scenario: dict[str, Any]) -> None:
    ray, plain = scenario["ray"], scenario["plain"]
    assert set(ray) == set(plain)
    for step in plain:
        if step == "statistics":
            continue  # timings differ; counts are checked below
        assert ray[step] == plain[step], step
    # The values themselves, not only their agreement.
    assert ray["live"] is True and ray["ready"] is True
    assert (ray["model_ready"], ray["variant_ready"], ray["unknown_ready"]) == (True, True, False)
    assert [(t["name"], t["datatype"], t["shape"]) for t in ray["metadata"]["inputs"]] == [
        ("x", "FP32", ["-1", "4"])
    ]
    assert ray["variant_metadata"]["name"] == "tiny-fp16"
    states = {(m["name"], m["state"]) for m in ray["index"]["models"]}
    assert states == {("tiny", "READY"), ("tiny-fp16", "READY")}
    assert ray["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert ray["unknown_version"]["status"] == "StatusCode.NOT_FOUND"
    assert ray["wrong_shape"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert ray["wrong_datatype"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert ray["unknown_output"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert ray["metadata_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert ray["with_id"] == {"model_name": "tiny", "id": "r-7"}


def test_answers_match_the_reference(served: Served, scenario: dict[str, Any]) -> None:
    folder, x = scenario["folder"] / "ray", served.x
    want = expected(served.repository, x)
    np.testing.assert_allclose(np.load(folder / "infer.npy"), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(folder / "with_id.npy"), want[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(folder / "after_errors.npy"), want[:3], atol=1e-6)
    # fp16 weights and arithmetic: within the build's own measured error, with room.
    np.testing.assert_allclose(np.load(folder / "variant.npy"), want, atol=2e-3)
    stream = scenario["ray"]["stream"]
    assert [answer.get("id") for answer in stream] == ["s0", None, "s1", "s2"]
    assert "model 'nope' not found" in stream[1]["message"]
    for k in range(3):
        got = np.load(folder / f"stream.s{k}.npy")
        np.testing.assert_allclose(got, want[: k + 1], rtol=1e-5, atol=1e-6)


def test_statistics_add_up_over_the_replicas(scenario: dict[str, Any]) -> None:
    """The script's requests reached both replicas; the counts are those of one server."""

    def counts(results: dict[str, Any]) -> tuple[Any, ...]:
        (stats,) = results["statistics"]["model_stats"]
        inference = stats["inference_stats"]
        return (
            stats["inference_count"],
            inference["success"].get("count"),
            inference["fail"].get("count"),
        )

    assert counts(scenario["ray"]) == counts(scenario["plain"])
    assert int(counts(scenario["ray"])[0]) > 0


def test_http_rest_through_the_replicas(served: Served) -> None:
    """KServe v2 HTTP/REST on the port the replicas share, fresh connections each time."""
    assert served.ray.http_port is not None
    base = f"http://127.0.0.1:{served.ray.http_port}/v2"
    rows = served.x[:3]
    body = {
        "inputs": [
            {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": rows.ravel().tolist()}
        ]
    }
    for _ in range(4):
        with urllib.request.urlopen(f"{base}/health/ready", timeout=WAIT) as answer:
            assert answer.status == 200
        request = urllib.request.Request(
            f"{base}/models/tiny/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            (output,) = json.loads(answer.read())["outputs"]
        assert (output["name"], output["shape"]) == ("y", [3, 2])
        got = np.asarray(output["data"], dtype=np.float32).reshape(3, 2)
        np.testing.assert_allclose(got, expected(served.repository, rows), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ repository control


def test_load_and_unload_reach_every_replica(served: Served, tmp_path: Path) -> None:
    replicas = served.replicas()
    (tmp_path / "replicas.json").write_text(
        json.dumps([replicas[k].control for k in sorted(replicas)])
    )
    got = run_script("control", served.url, tmp_path, served.x)
    unavailable = "StatusCode.UNAVAILABLE"
    want = expected(served.repository, served.x)
    assert got["unload"] is None and got["load"] is None
    assert got["ready_after_unload"] == [False, False]
    for answer in got["infer_after_unload"]:
        assert answer["status"] == unavailable and "not ready" in answer["message"], answer
    for k in range(2):  # the model itself stays served at both
        assert got["model_still_served"][k] == {"model_name": "tiny", "id": ""}
        np.testing.assert_allclose(np.load(tmp_path / f"model_after_unload.{k}.npy"), want, 1e-5)
    states = {m["name"]: m["state"] for m in got["index_after_unload"]["models"]}
    assert states == {"tiny": "READY", "tiny-fp16": "UNAVAILABLE"}
    assert got["ready_after_load"] == [True, True]
    for k in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"infer_after_load.{k}.npy"), want, atol=2e-3)
    assert got["load_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert got["unload_unknown"]["status"] == "StatusCode.NOT_FOUND"


# ------------------------------------------------------------------ faults


def test_replica_killed_under_load(served: Served, tmp_path: Path) -> None:
    """SIGKILL to a busy replica: every request answered right, or refused UNAVAILABLE first.

    The load's clients send a request again after UNAVAILABLE (as a client should), so every
    request ends answered; the test also sees Ray restart the replica and it serve again.
    """
    load = Load(served.url, tmp_path, served.x)
    try:
        load.more(20, "the load under way")
        replicas = served.replicas()
        before = {k: served_rows(r.control) for k, r in replicas.items()}
        load.more(60, "more of the load answered")
        busy = {k: served_rows(r.control) - before[k] for k, r in replicas.items()}
        assert min(busy.values()) > 0, busy  # the clients' connections reach both replicas
        victim = max(busy, key=lambda k: busy[k])
        old = replicas[victim]
        os.kill(old.pid, signal.SIGKILL)
        back = wait_until(
            lambda: (r := served.replicas().get(victim)) and r.pid != old.pid and r,
            f"replica {victim} restarted by Ray",
            WAIT,
        )
        load.more(60, "the load answered after the restart")
    finally:
        requests = load.stop()
    # The restarted replica, on its own new port: serving, with the models of the others.
    assert back.node == old.node  # soft affinity: its node is alive, so there again
    settled(served, load, requests, back, f"replica {victim} killed")


def settled(
    served: Served, load: Load, requests: list[dict[str, Any]], back: Replica, fault: str
) -> None:
    """After a fault: the restarted replica serves right on its own port, and every request
    of the load was answered right (at once, or after UNAVAILABLE)."""
    with InferenceClient(back.control) as client:
        got = client.infer("tiny", {"x": served.x})
    with InferenceClient(served.url) as client:  # every replica ready again, as one server
        assert client.ready() is True and client.ready("tiny") is True
    np.testing.assert_allclose(
        next(iter(got.values())), expected(served.repository, served.x), rtol=1e-5, atol=1e-6
    )
    tally = load.classify(requests, served.repository, served.x)
    print(f"{fault} under load: {len(requests)} requests, {tally}")
    assert tally["lost"] == 0 and tally["wrong"] == 0, (tally, served.ray.output[-6000:])
    assert tally["answered"] + tally["refused_then_answered"] == len(requests)


class Load:
    """``triton_cluster.py load`` in a process of its own: clients that retry UNAVAILABLE."""

    def __init__(
        self, url: str, folder: Path, x: np.ndarray, threads: int = 16, pause: float = 0.0
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "x.npy", x)
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "load", url, str(folder)],
            cwd=REPO_ROOT,
            env={**os.environ, "LOAD_THREADS": str(threads), "LOAD_PAUSE": str(pause)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def answered(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int((self.folder / "progress").read_text() or 0)
        return 0

    def more(self, count: int, what: str) -> None:
        """Wait until ``count`` more requests than now are answered."""
        mark = self.answered()
        wait_until(lambda: self.answered() >= mark + count, what, WAIT)

    def stop(self) -> list[dict[str, Any]]:
        (self.folder / "stop").touch()
        out, err = self.process.communicate(timeout=WAIT)
        assert self.process.returncode == 0, err
        return list(json.loads(out)["requests"])

    def classify(
        self, requests: list[dict[str, Any]], repository: Path, x: np.ndarray
    ) -> dict[str, int]:
        return Load.classify_in(self.folder, requests, repository, x)

    @staticmethod
    def classify_in(
        folder: Path, requests: list[dict[str, Any]], repository: Path, x: np.ndarray
    ) -> dict[str, int]:
        """Every request: answered right at once, answered right after UNAVAILABLE, or not."""
        outputs = np.load(folder / "outputs.npz")
        tally = {"answered": 0, "refused_then_answered": 0, "refused": 0, "lost": 0, "wrong": 0}
        for request in requests:
            attempts = request["attempts"]
            tally["refused"] += sum(a == "StatusCode.UNAVAILABLE" for a in attempts)
            if attempts[-1] != "answered" or any(
                a != "StatusCode.UNAVAILABLE" for a in attempts[:-1]
            ):
                tally["lost"] += 1
                continue
            rows = x[request["first"] : request["first"] + request["rows"]]
            if not np.allclose(
                outputs[request["key"]], expected(repository, rows), rtol=1e-5, atol=1e-6
            ):
                tally["wrong"] += 1
            tally["answered" if len(attempts) == 1 else "refused_then_answered"] += 1
        return tally


def test_a_restarted_replica_serves_what_the_others_serve(served: Served) -> None:
    """A model unloaded before a replica died stays unloaded in the process Ray restarts."""
    with InferenceClient(served.url) as client:
        client.unload("tiny-fp16")
        old = served.replicas()[0]
        os.kill(old.pid, signal.SIGKILL)
        back = wait_until(
            lambda: (r := served.replicas().get(0)) and r.pid != old.pid and r,
            "replica 0 restarted by Ray",
            WAIT,
        )

        def ready_alone(control: str, model: str) -> bool:
            answer = alone(control, pb.ModelReadyRequest(name=model), "ModelReady")
            return bool(answer.ready)

        assert ready_alone(back.control, "tiny") is True
        assert ready_alone(back.control, "tiny-fp16") is False
        index = alone(back.control, pb.RepositoryIndexRequest(), "RepositoryIndex")
        assert {(m.name, m.state) for m in index.models} == {
            ("tiny", "READY"),
            ("tiny-fp16", "UNAVAILABLE"),
        }
        # Wired again: a load through the public port reaches the restarted replica too.
        client.load("tiny-fp16")
        for replica in served.replicas().values():
            assert ready_alone(replica.control, "tiny-fp16") is True, replica


def test_more_replicas_than_free_cpus_is_one_error(served: Served, tmp_path: Path) -> None:
    """A second serve on the cluster asking for more CPUs than are free: refused at once."""
    with pytest.raises(ServerError, match=r"need 20 free CPUs; the cluster has \d"):
        ServerProcess(
            served.repository,
            "--ray",
            served.cluster.address,
            "--replicas",
            "20",
            "--ray-namespace",
            "another",
            threads=1,
            metrics=False,
            pattern=SERVING,
            cwd=REPO_ROOT,
            start_seconds=WAIT,
        )


def test_autoscaling_adds_a_replica_under_load_and_drains_it_when_the_load_falls(
    served: Served, tmp_path: Path
) -> None:
    """A second serve on the cluster, 1 to 2 replicas of 1 CPU, half a core used wanted per
    replica: 16 clients make it add one, which serves new connections beside the first;
    when one slow client is left it drains one. Every request of both loads is answered
    right (at once, or after UNAVAILABLE from the replica being drained)."""
    scaled = ServerProcess(
        served.repository,
        "--ray", served.cluster.address, "--ray-namespace", "autoscaled",
        "--replicas", "1", "--max-replicas", "2", "--target-cpu", "0.5",
        "--scale-delays", "1,2", "--replica-cpus", "1",
        threads=1, metrics=True, pattern=SERVING, cwd=REPO_ROOT, start_seconds=120,
    )  # fmt: skip
    url = f"127.0.0.1:{scaled.port}"
    heavy = Load(url, tmp_path / "heavy", served.x)
    light = None
    try:
        assert "with 1 to 2 replica(s)" in scaled.output
        seen(scaled, lambda: 1 in replicas_of(scaled), "a second replica joined")
        assert re.search(r"cores used over 1 replica\(s\): scaling up to 2", scaled.output)
        first, added = replicas_of(scaled)[0], replicas_of(scaled)[1]
        light = Load(url, tmp_path / "light", served.x, threads=1, pause=0.01)
        before = served_rows(added.control)
        with InferenceClient(url) as client:  # the repository, as one server, on both
            assert client.ready("tiny") is True
        fresh = [grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1)])
                 for _ in range(16)]  # fmt: skip
        for channel in fresh:  # new connections: the kernel spreads them over both replicas
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answer = stub.ModelInfer(raw_tiny(served.x[:3]), timeout=WAIT)
            np.testing.assert_allclose(
                np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(3, -1),
                expected(served.repository, served.x[:3]), rtol=1e-5, atol=1e-6,
            )  # fmt: skip
            channel.close()
        assert served_rows(added.control) > before, "no new connection reached the new replica"
        assert served_rows(first.control) > 0
        # The driver's /metrics adds both replicas up (each replica serves none of its own).
        found = re.search(r"\(metrics: (http://\S+/metrics)\)", scaled.output)
        assert found, scaled.output[-2000:]
        with urllib.request.urlopen(found.group(1), timeout=WAIT) as page:
            scraped = page.read().decode()
        assert re.search(r"^onnxforge_replicas 2\.0$", scraped, re.MULTILINE), scraped[-2000:]
        answered = re.search(
            r'^onnxforge_requests_total\{model="tiny",status="OK"\} (\S+)$', scraped, re.MULTILINE
        )
        assert answered and float(answered.group(1)) >= 16, scraped[-2000:]
        heavy_requests = heavy.stop()
        heavy = None
        seen(scaled, lambda: "replica 1: stopped (scaled down)" in scaled.output, "scaled down")
        assert "scaling down to 1" in scaled.output
        light.more(10, "the light load answered by the one replica left")
        light_requests = light.stop()
        light = None
    finally:
        for load in (heavy, light):
            if load is not None:
                load.stop()
        code = scaled.stop(WAIT)
        scaled.close()
    assert code == 0, scaled.output[-4000:]
    for name, requests in (("heavy", heavy_requests), ("light", light_requests)):
        tally = Load.classify_in(tmp_path / name, requests, served.repository, served.x)
        print(f"autoscaling, {name} load: {len(requests)} requests, {tally}")
        assert tally["lost"] == 0 and tally["wrong"] == 0, (tally, scaled.output[-6000:])


def seen(server: ServerProcess, check: Any, what: str) -> None:
    """``wait_until``, with the driver's last lines when it fails."""
    try:
        wait_until(check, what, WAIT)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{server.output[-6000:]}") from None


def raw_tiny(x: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, np.float32).tobytes())
    return request


def test_worker_node_killed_under_load(served: Served, tmp_path: Path) -> None:
    """The worker node's raylet and processes killed outright (last: the cluster keeps one node).

    Its replica is restarted on the head node (the placement is soft), beside the other,
    sharing its port; meanwhile every request is answered right, or refused UNAVAILABLE and
    then answered right.
    """
    (worker,) = served.cluster.worker_nodes
    on_worker = [r for r in served.replicas().values() if worker.node_id.startswith(r.node)]
    assert len(on_worker) == 1, (worker.node_id, served.replicas())
    lost = on_worker[0]
    load = Load(served.url, tmp_path, served.x)
    try:
        load.more(20, "the load under way")
        before = served_rows(lost.control)
        load.more(60, "more of the load answered")
        assert served_rows(lost.control) > before  # the node's replica was serving this load
        served.cluster.remove_node(worker, allow_graceful=False)
        back = wait_until(
            lambda: (r := served.replicas().get(lost.index)) and r.pid != lost.pid and r,
            f"replica {lost.index} restarted on another node",
            WAIT,
        )
        load.more(60, "the load answered after the restart")
    finally:
        requests = load.stop()
    head = served.cluster.head_node.node_id
    assert back.node != lost.node and head.startswith(back.node)
    settled(served, load, requests, back, "worker node killed")


def test_sigterm_drains_every_replica_and_exits_0(served: Served) -> None:
    """Last: the driver's SIGTERM stops every replica (drained) and ends their processes."""
    pids = [replica.pid for replica in served.replicas().values()]
    assert served.ray.stop(WAIT) == 0, served.ray.output[-4000:]
    assert "ray: shutting down: every replica finishes its in-flight requests" in served.ray.output
    for pid in pids:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), f"replica pid {pid} gone")
