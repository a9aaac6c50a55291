"""``serve``'s default ONNX Runtime threads, through real processes: the physical cores this
process may use, within its cgroup's CPU quota (which ONNX Runtime alone ignores)."""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from onnxforge.bench.process import ServerProcess
from onnxforge.builder import load_spec, reference
from onnxforge.client import InferenceClient
from onnxforge.cpus import intra_op_threads
from tests.conftest import MODELS, REPO_ROOT
from tests.server.conftest import make_repository

SPEC = load_spec(MODELS / "digits-mlp" / "spec.yaml")
X = np.random.default_rng(5).random((2, 64)).astype(np.float32)
SAID = re.compile(r"(\d+) intra-op threads? per session")


def test_the_default_is_said_at_start_up_and_serves_right(tmp_path: Path) -> None:
    server = ServerProcess(make_repository(tmp_path), cwd=REPO_ROOT)
    try:
        said = SAID.search(server.output)
        assert said is not None, server.output
        assert int(said.group(1)) == intra_op_threads()
        with InferenceClient(server.url) as client:
            got = client.infer("digits-mlp", {"x": X})["probabilities"]
        np.testing.assert_allclose(got, reference.forward(SPEC, X), atol=1e-5, rtol=1e-4)
    finally:
        server.close()


@contextlib.contextmanager
def one_core_cgroup() -> Iterator[Path]:
    """A cgroup with a CPU quota of one core (v1 or v2); skips where none can be made."""
    cpus = os.cpu_count() or 1
    if cpus < 2:
        pytest.skip("one CPU: a one-core quota changes nothing")
    name = f"onnxforge-test-{uuid.uuid4().hex[:8]}"
    for parent, files in (
        (Path("/sys/fs/cgroup/cpu"), {"cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": None}),
        (Path("/sys/fs/cgroup"), {"cpu.max": "100000 100000"}),
    ):
        group = parent / name
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            if not (group / "cgroup.procs").exists():
                continue  # not a cgroup file system
            for file, value in files.items():
                if value is not None:
                    (group / file).write_text(value)
            yield group
            return
        except OSError:
            continue
        finally:
            with contextlib.suppress(OSError):
                for _ in range(50):  # the process must be gone before the group can go
                    try:
                        group.rmdir()
                        break
                    except OSError:
                        time.sleep(0.1)
    pytest.skip("no cgroup can be made here (not root, or no writable cpu controller)")


def test_a_one_core_cgroup_quota_gives_one_thread(tmp_path: Path) -> None:
    """ONNX Runtime would take a thread per core of the machine; the quota says one."""
    repository = make_repository(tmp_path)
    with one_core_cgroup() as group:
        # The server inherits the group it is started from: this process joins it for the
        # start, then goes back where it was.
        home = group.parent / "cgroup.procs"
        (group / "cgroup.procs").write_text(str(os.getpid()))
        try:
            server = ServerProcess(repository, metrics=False, cwd=REPO_ROOT)
        finally:
            home.write_text(str(os.getpid()))
        try:
            assert str(server.pid) in (group / "cgroup.procs").read_text().split()
            said = SAID.search(server.output)
            assert said is not None, server.output
            assert said.group(1) == "1"
            with InferenceClient(server.url) as client:
                got = client.infer("digits-mlp", {"x": X})["probabilities"]
            np.testing.assert_allclose(got, reference.forward(SPEC, X), atol=1e-5, rtol=1e-4)
        finally:
            server.close()
