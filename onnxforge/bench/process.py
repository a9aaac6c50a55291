"""``onnxforge serve`` as a process of its own: started on free ports, read, stopped.

The server binds port 0 (and ``--metrics-port 0``, and ``--http-port 0`` when asked for
HTTP/REST, ``--no-http`` otherwise); the ports it got are read from its "serving ..."
line. It runs in a session of its own (``start_new_session``), so stopping it reaches
whatever it started (``--workers``): :meth:`ServerProcess.close` ends the whole process
group. Its output (stdout and stderr) is collected line by line in ``lines`` by a
reader thread; ``closed`` is set when the output ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

#: The line ``onnxforge serve`` prints once it accepts requests; group 1 is the port.
SERVING = r"serving \d+ model\(s\) from .* on 127\.0\.0\.1:(\d+)"
#: Where that line (or the workers' one) says the HTTP/REST port is; group 1 the port.
HTTP_SERVING = re.compile(r"HTTP on https?://\S+:(\d+)")


class ServerError(RuntimeError):
    """The server did not start: it exited, or printed no "serving" line in time."""


class ServerProcess:
    """``python -m onnxforge serve REPOSITORY --port 0 ... *extra`` until :meth:`close`.

    ``metrics`` False passes ``--no-metrics``; otherwise the metrics port is a free one too.
    ``http`` True serves HTTP/REST on a free port too (``http_port``); False ``--no-http``.
    ``threads`` is ONNX Runtime's intra-op threads per session (``None``: the server's
    default). ``pattern`` is the line that says the server is up, its group 1 the port.
    """

    def __init__(
        self,
        repository: Path,
        *extra: str,
        threads: int | None = None,
        metrics: bool = True,
        http: bool = False,
        pattern: str = SERVING,
        cwd: Path | None = None,
        start_seconds: float = 120.0,
    ) -> None:
        self.pattern = re.compile(pattern)
        command = [sys.executable, "-m", "onnxforge", "serve", str(repository), "--port", "0"]
        command += ["--metrics-port", "0"] if metrics else ["--no-metrics"]
        command += ["--http-port", "0"] if http else ["--no-http"]
        if threads is not None:
            command += ["--threads", str(threads)]
        self.command = [*command, *extra]
        self.lines: list[str] = []
        self.closed = threading.Event()  # the reader reached the end of the output
        self._changed = threading.Event()  # the "serving" line came, or the output ended
        self._port: int | None = None
        self.http_port: int | None = None  # once started, when ``http``
        self.process = subprocess.Popen(
            self.command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: close() reaches the workers
        )
        threading.Thread(target=self._read, daemon=True).start()
        self._changed.wait(start_seconds)
        if self._port is None:
            self.close()
            raise ServerError(
                f"the server did not start within {start_seconds:g} s:\n" + self.output[-4000:]
            )
        self.port: int = self._port

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if self._port is None:
                found = self.pattern.search(line)
                if found:
                    http = HTTP_SERVING.search(line)
                    self.http_port = int(http.group(1)) if http else None
                    self._port = int(found.group(1))
                    self._changed.set()
        self.closed.set()
        self._changed.set()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``: the HTTP/REST address (started with ``http=True``)."""
        if self.http_port is None:
            raise ServerError("the server serves no HTTP/REST (start it with http=True)")
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        """Everything the server printed so far."""
        return "".join(self.lines)

    def stop(self, seconds: float = 60.0) -> int:
        """SIGTERM (the server drains), then its exit code once it has exited."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(seconds)

    def close(self, seconds: float = 30.0) -> int | None:
        """Stop the server (and its workers) if it still runs; release its output pipe.

        SIGTERM first, SIGKILL after ``seconds``; whatever else is left in its process group
        is killed. Returns its exit code (None if it could not be reaped).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(seconds)
        # Whatever the server started (workers) goes with it: they share its session.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.closed.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
