"""``onnxforge serve`` as a user runs it: a real process, infer and bench against it, SIGTERM."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxforge.builder import load_spec, reference
from tests.conftest import MODELS
from tests.helpers import wait_until
from tests.server.processes import ServeProcess


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    repository = tmp_path_factory.mktemp("repo")
    for name in ("digits-mlp", "wide-mlp"):
        (repository / name).mkdir()
        for file in (MODELS / name).glob("*"):
            if file.suffix in (".yaml", ".npz"):
                shutil.copy(file, repository / name / file.name)
    (repository / "wide-mlp" / "spec.yaml").write_text(
        (MODELS / "wide-mlp" / "spec.yaml")
        .read_text()
        .replace("variants: [fp32, fp16, int8-dynamic, int8-static]", "variants: [fp32]")
    )
    server = ServeProcess(repository)
    yield server
    server.close()


def test_infer_command_against_a_running_server(
    serving: ServeProcess, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    x = np.random.default_rng(0).uniform(size=(4, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_cli(
        "infer",
        "digits-mlp",
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--url",
        serving.url,
        "--save",
        tmp_path / "out",
        "--json",
    )
    assert result.code == 0, result.err
    want = reference.run(load_spec(MODELS / "digits-mlp" / "spec.yaml"), x)
    got = json.loads(result.out)
    np.testing.assert_allclose(np.asarray(got["probabilities"]), want["probabilities"], atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "hidden.npy"), want["hidden"], atol=1e-5)
    missing = run_cli("infer", "nope", "--input", f"x={tmp_path / 'x.npy'}", "--url", serving.url)
    assert missing.code == 2 and "NOT_FOUND: model 'nope' not found" in missing.err


def test_bench_command_reports_every_level(
    serving: ServeProcess, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    result = run_cli(
        "bench",
        "digits-mlp",
        "--url",
        serving.url,
        "--concurrency",
        "1,4",
        "--duration",
        "0.5",
        "--json",
    )
    assert result.code == 0, result.err
    levels = json.loads(result.out)
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["errors"] == 0 and level["requests"] > 0
        assert level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]
        assert level["throughput_rps"] == pytest.approx(level["requests"] / level["seconds"])


def test_sigterm_finishes_in_flight_requests_and_exits_0(serving: ServeProcess) -> None:
    from onnxforge.client import InferenceClient, InferenceServerError

    spec = load_spec(MODELS / "wide-mlp" / "spec.yaml")
    answered: list[float] = []
    errors: list[InferenceServerError] = []

    def client(seed: int) -> None:
        x = np.random.default_rng(seed).normal(size=(64, 512)).astype(np.float32)
        want = reference.forward(spec, x)
        with InferenceClient(serving.url) as inference:
            while True:  # until the server goes away: SIGTERM lands mid-traffic
                try:
                    got = inference.infer("wide-mlp", {"x": x}, timeout=60)["probabilities"]
                except InferenceServerError as error:
                    errors.append(error)
                    return
                answered.append(float(np.abs(got - want).max()))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(answered) >= 20, "20 answers before SIGTERM")
    code = serving.stop()
    for thread in threads:
        thread.join(60)
    assert code == 0, "".join(serving.lines)
    assert "shutting down: finishing in-flight requests" in "".join(serving.lines)
    assert max(answered) < 1e-5  # every answer, including those during shutdown, is right
    # Every request the server had accepted was answered; none was cut off.
    stopped = re.search(
        r"stopped: \d+ answered during the drain, (\d+) refused UNAVAILABLE, (\d+) cut off",
        "".join(serving.lines),
    )
    assert stopped is not None and stopped.group(2) == "0", "".join(serving.lines)
    # Requests sent after the stop never reached a model: each client's last one was
    # answered UNAVAILABLE (retryable) -- by the draining server, or, for a client slower
    # to send than the drain's quiet period, by the transport once the server had gone.
    assert len(errors) == 6 and {e.code for e in errors} == {"UNAVAILABLE"}
    assert int(stopped.group(1)) <= 6
