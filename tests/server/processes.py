"""A real ``onnxforge serve`` process for tests: started on free ports, read, stopped."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import REPO_ROOT


class ServeProcess:
    def __init__(
        self,
        repository: Path,
        *extra: str,
        pattern: str = r"serving \d+ model\(s\) from .* on 127\.0\.0\.1:(\d+)",
    ) -> None:
        self.pattern = pattern
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "onnxforge",
                "serve",
                str(repository),
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--threads",
                "1",
                *extra,
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: close() reaches the workers
        )
        self.lines: list[str] = []
        self.closed = threading.Event()  # the output reader reached the end
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(self.pattern, line)
            if found:
                threading.Thread(target=self._drain, daemon=True).start()
                return int(found.group(1))
        raise AssertionError("server did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
        self.closed.set()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop the server (and any workers) if it still runs; release its output pipe."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        # Whatever the server started (workers) goes with it: they share its session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.closed.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)
