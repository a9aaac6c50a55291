"""``onnxforge serve --workers 2``: every log line names its process; metrics say where.

Each worker's start-up line names the parent's metrics URL (not "metrics: off"), and every
line carries ``[worker N]`` / ``[parent]`` (text) or ``role`` and ``worker`` (JSON).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.test_infer_bench import digits_repository
from tests.server.processes import ServeProcess

STARTED = r"serving with 2 workers on 127\.0\.0\.1:(\d+)"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+(?: \[([^\]]+)\])?: ")


def served_lines(repository: Path, log_format: str) -> tuple[list[str], int]:
    """The server's log lines from start to stop, and the parent's metrics port."""
    with ServeProcess(
        repository, "--workers", "2", "--log-format", log_format, pattern=STARTED
    ) as server:
        started = re.search(r"serving with 2 workers on .*\(metrics: (\d+)\)", server.output)
        assert started is not None, server.output
        assert server.stop() == 0, server.output
        server.closed.wait(30)
        return list(server.lines), int(started.group(1))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_repository(tmp_path_factory.mktemp("repo"))


def test_json_lines_carry_the_worker_and_workers_name_the_parents_metrics(
    repository: Path,
) -> None:
    lines, metrics_port = served_lines(repository, "json")
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert entries, lines
    workers = [entry for entry in entries if entry.get("role") == "worker"]
    parent = [entry for entry in entries if entry.get("role") == "parent"]
    assert len(workers) + len(parent) == len(entries), [e for e in entries if "role" not in e]
    assert {entry["worker"] for entry in workers} == {0, 1}
    assert all("worker" not in entry for entry in parent)
    assert any(entry["message"].startswith("serving with 2 workers") for entry in parent)
    # Each worker's own start-up line says where its metrics are, with its id.
    started = [entry for entry in workers if entry["message"].startswith("serving 1 model(s)")]
    assert sorted(entry["worker"] for entry in started) == [0, 1]
    where = f"http://127.0.0.1:{metrics_port}/metrics, served by the parent for all workers"
    for entry in started:
        assert entry["message"].endswith(f"(metrics: {where})"), entry["message"]
    assert not any("metrics: off" in entry["message"] for entry in entries)


def test_text_lines_carry_the_worker(repository: Path) -> None:
    lines, _ = served_lines(repository, "text")
    labels = [found.group(1) for line in lines if (found := TEXT_LINE.match(line))]
    assert labels, lines
    assert None not in labels, [line for line in lines if TEXT_LINE.match(line)]
    assert set(labels) == {"parent", "worker 0", "worker 1"}
    started = [line for line in lines if "serving 1 model(s)" in line]
    assert len(started) == 2
    assert all("served by the parent for all workers" in line for line in started)
