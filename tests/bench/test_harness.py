"""The benchmark harness's parts that decide what its figures mean: the load driver's counts,
statuses and bounds, percentiles, the cgroup quota, the tables. (Its server process is
what every ``ServeProcess`` test runs on.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from onnxforge.bench import Level, Load, Outcome, drive, markdown_table, percentiles_ms
from onnxforge.bench.load import status_of
from onnxforge.cpus import cgroup_cpus, physical_cores, usable_cpus


class StatusError(Exception):
    """Like the client's errors: a status name in ``code``, the server's words in ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def _run(load: Load, fail_every: int = 0) -> tuple[Outcome, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []

    async def send(worker: int, index: int) -> object:
        calls.append((worker, index))
        await asyncio.sleep(0)  # a turn of the loop, as a real call takes
        if fail_every and index % fail_every == 0:
            raise StatusError("UNAVAILABLE", f"request {index} refused")
        return index

    return asyncio.run(drive(send, load, rows_per_request=4)), calls


def test_a_request_count_sends_exactly_that_many_and_measures_each() -> None:
    outcome, calls = _run(Load(concurrency=3, requests=10))
    assert sorted(index for _, index in calls) == list(range(10))
    assert {worker for worker, _ in calls} == {0, 1, 2}
    assert (outcome.sent, outcome.answered, outcome.errors) == (10, 10, 0)
    assert outcome.statuses == {"OK": 10}
    assert len(outcome.latencies) == 10 and (outcome.latencies >= 0).all()
    assert not outcome.stopped_by_time_limit
    assert outcome.rows_per_second == pytest.approx(4 * outcome.requests_per_second)
    assert outcome.requests_per_second == pytest.approx(10 / outcome.seconds)


def test_errors_that_carry_a_status_are_counted_under_it() -> None:
    outcome, _ = _run(Load(concurrency=2, requests=10), fail_every=3)
    assert outcome.statuses == {"OK": 6, "UNAVAILABLE": 4}  # requests 0, 3, 6 and 9
    assert (outcome.answered, outcome.errors, outcome.sent) == (6, 4, 10)
    assert outcome.first_error == "UNAVAILABLE: request 0 refused"


def test_any_other_exception_stops_the_run() -> None:
    async def send(worker: int, index: int) -> object:
        raise ValueError("a bug in the caller's send")

    with pytest.raises(ValueError, match="a bug in the caller's send"):
        asyncio.run(drive(send, Load(concurrency=2, requests=5)))


def test_status_of_reads_grpc_and_client_errors_only() -> None:
    assert status_of(StatusError("NOT_FOUND", "no model 'x'")) == ("NOT_FOUND", "no model 'x'")
    assert status_of(ValueError("x")) is None


def test_a_duration_run_reports_over_its_window() -> None:
    outcome, calls = _run(Load(concurrency=2, duration=0.05, warmup=0.02))
    assert outcome.seconds == 0.05
    assert outcome.sent == len(calls) > 0
    # Answers in the warm-up are not measured: at most every call is.
    assert sum(outcome.statuses.values()) == outcome.answered <= outcome.sent


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"concurrency": 0, "requests": 1}, "concurrency must be at least 1"),
        ({"concurrency": 1}, "a duration or a number of requests"),
        ({"concurrency": 1, "requests": 1, "duration": 1.0}, "a duration or a number of requests"),
        ({"concurrency": 1, "duration": 0.0}, "duration must be positive"),
    ],
)
def test_a_load_refuses_what_cannot_be_run(given: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Load(**given)  # type: ignore[arg-type]


def test_percentiles_are_in_milliseconds_and_nan_without_answers() -> None:
    seconds = np.arange(1, 101) / 1000  # 1..100 ms
    assert percentiles_ms(seconds, (50, 90, 99)) == pytest.approx([50.5, 90.1, 99.01])
    assert all(np.isnan(percentiles_ms(np.zeros(0))))


def test_a_level_is_what_onnxforge_bench_prints() -> None:
    outcome = Outcome(
        latencies=np.asarray([0.001, 0.002, 0.003, 0.004]),
        statuses={"OK": 4, "RESOURCE_EXHAUSTED": 1},  # type: ignore[arg-type]
        seconds=2.0,
        sent=5,
        cpu_seconds=0.0,
        rows_per_request=8,
    )
    level = Level.of(3, outcome).as_dict()
    assert level == {
        "concurrency": 3,
        "requests": 4,
        "errors": 1,
        "seconds": 2.0,
        "rows_per_request": 8,
        "throughput_rps": 2.0,
        "rows_per_second": 16.0,
        "p50_ms": pytest.approx(2.5),
        "p90_ms": pytest.approx(3.7),
        "p99_ms": pytest.approx(3.97),
    }


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.cfs_quota_us": "200000\n", "cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_quota_in_cores(
    tmp_path: Path, files: dict[str, str], cores: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert cgroup_cpus(tmp_path) == cores


def test_usable_cpus_never_exceeds_the_logical_ones() -> None:
    import os

    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


def test_a_markdown_table_aligns_numbers_right() -> None:
    text = markdown_table(["model", "req/s"], [["digits-mlp", "1,234"], ["w", "5"]])
    assert text.splitlines() == [
        "| model      | req/s |",
        "|------------|-------|",
        "| digits-mlp | 1,234 |",
        "| w          |     5 |",
    ]


def test_physical_cores_counts_the_hyper_threads_of_one_core_once(tmp_path: Path) -> None:
    import os

    allowed = sorted(os.sched_getaffinity(0))
    for cpu in allowed:  # CPUs 2k and 2k+1 are the two threads of core k
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{cpu // 2}\n")
    assert physical_cores(tmp_path) == len({cpu // 2 for cpu in allowed})
    (tmp_path / f"cpu{allowed[0]}" / "topology" / "core_id").unlink()
    assert physical_cores(tmp_path) is None  # topology unknown: no guess


@pytest.mark.parametrize(
    ("physical", "usable", "workers", "threads"),
    [
        (8, 4, 1, 4),  # a 4-core quota on an 8-core host: 4, not ONNX Runtime's 8
        (8, 4, 2, 2),
        (8, 4, 3, 1),
        (2, 1, 4, 1),  # never fewer than one
        (2, 4, 1, 2),  # 4 logical CPUs on 2 cores: one thread per core
        (None, 3, 1, 3),  # topology unknown: the usable CPUs
    ],
)
def test_intra_op_threads_are_the_cores_within_the_quota_shared_out(
    monkeypatch: pytest.MonkeyPatch, physical: int | None, usable: int, workers: int, threads: int
) -> None:
    from onnxforge import cpus

    monkeypatch.setattr(cpus, "physical_cores", lambda: physical)
    monkeypatch.setattr(cpus, "usable_cpus", lambda: usable)
    assert cpus.intra_op_threads(workers) == threads
