"""The process tree a server's CPU per request is read over: a real parent, child and
grandchild, each burning CPU of its own; no timing bounds beyond what ``/proc`` must show."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxforge.bench import (
    process_cpu_seconds,
    process_tree,
    process_tree_cpu_seconds,
    process_tree_rss_kib,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

# Burns about ``seconds`` of CPU, starts a child doing the same (``depth`` levels down),
# says "ready" when its own burn is done, then waits for stdin to close.
SCRIPT = """
import subprocess, sys, time
depth, seconds = int(sys.argv[1]), float(sys.argv[2])
child = None
if depth > 0:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[3], str(depth - 1), sys.argv[2],
                              sys.argv[3]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
began = time.process_time()
while time.process_time() - began < seconds:
    pass
if child is not None:
    child.stdout.readline()
print("ready", flush=True)
sys.stdin.read()
if child is not None:
    child.stdin.close()
    child.wait()
"""


def _start(depth: int, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(depth), str(seconds), SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    process.wait(30)
    process.stdout.close()


def test_the_tree_holds_the_process_and_every_descendant() -> None:
    process = _start(depth=2, seconds=0.05)
    try:
        tree = process_tree(process.pid)
        assert tree[0] == process.pid
        assert len(tree) == 3 and len(set(tree)) == 3
        assert os.getpid() not in tree  # the parent is not part of its child's tree
        # The tree of a descendant is that descendant and what is below it.
        assert set(process_tree(tree[1])) <= set(tree[1:])
        assert len(process_tree(tree[1])) == 2
    finally:
        _stop(process)


def test_cpu_and_memory_are_summed_over_the_tree() -> None:
    process = _start(depth=2, seconds=0.3)
    try:
        own = process_cpu_seconds(process.pid)
        total = process_tree_cpu_seconds(process.pid)
        # Three processes burned about 0.3 s each; the one started holds a third of it.
        assert own >= 0.2
        assert total >= own + 0.4
        rss = process_tree_rss_kib(process.pid)
        assert rss > 3 * 1024  # three Python interpreters, several MiB each
    finally:
        _stop(process)


def test_a_gone_process_has_an_empty_tree() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(30)
    time.sleep(0.05)
    assert process_tree(process.pid) == []
    assert process_tree_cpu_seconds(process.pid) == 0.0
    assert process_tree_rss_kib(process.pid) == 0
