"""``serve --ray``'s options, and Ray staying out of every process that does not ask for it."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO_ROOT, CliResult


def test_import_and_plain_serve_leave_ray_out() -> None:
    code = textwrap.dedent(
        """
        import sys
        import onnxforge, onnxforge.cli, onnxforge.cli.serve, onnxforge.cluster
        from onnxforge.cluster import RayOptions
        RayOptions()
        print(sorted(name for name in sys.modules if name == "ray" or name.startswith("ray.")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_workers_and_ray_do_not_combine(run_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    result = run_cli("serve", tmp_path, "--ray", "--workers", "2")
    assert result.code == 2
    assert "--workers does not combine with --ray: use --replicas" in result.err


def test_ray_flags_are_listed_in_help(run_cli: Callable[..., CliResult]) -> None:
    result = run_cli("serve", "--help")
    assert result.code == 0
    for flag in (
        "--ray [ADDRESS]",
        "--replicas",
        "--replica-cpus",
        "--ray-namespace",
        "--max-replicas",
        "--target-ongoing",
        "--scale-delays",
    ):
        assert flag in result.out


def test_an_address_where_no_cluster_answers_is_one_line(
    run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    with socket.socket() as unused:  # bound, never listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        result = run_cli("serve", tmp_path, "--ray", f"127.0.0.1:{port}")
    assert result.code == 2
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port}: Connection refused" in result.err
    assert "Traceback" not in result.err


def test_an_address_without_a_port_is_refused(
    run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    result = run_cli("serve", tmp_path, "--ray", "somewhere")
    assert result.code == 2
    assert "expected HOST:PORT, 'auto' or ray://HOST:PORT" in result.err


def test_autoscaling_flags_that_cannot_hold_are_one_line(
    run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    without_ray = run_cli("serve", tmp_path, "--max-replicas", "3")
    assert without_ray.code == 2
    assert "--max-replicas scales replicas on a Ray cluster: add --ray" in without_ray.err
    fewer = run_cli("serve", tmp_path, "--ray", "--replicas", "3", "--max-replicas", "2")
    assert fewer.code == 2
    assert "2 is fewer than --replicas 3" in fewer.err
    delays = run_cli("serve", tmp_path, "--ray", "--max-replicas", "2", "--scale-delays", "5")
    assert delays.code == 2
    assert "expected two numbers of seconds, UP,DOWN (5,60), got '5'" in delays.err
    for result in (without_ray, fewer, delays):
        assert "Traceback" not in result.err
