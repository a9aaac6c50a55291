"""A real ``onnxforge serve`` process for tests: the harness's server on free ports, one thread.

``ServeProcess`` is ``onnxforge.bench.ServerProcess`` with what every test wants: run from
the repository's root, ``--threads 1`` (two cores are shared by the suite), metrics on a
free port, HTTP/REST on a free port with ``http=True`` (off otherwise: never Triton's 8000,
which concurrent runs would fight over). ``close()`` ends its whole process group, workers
included.
"""

from __future__ import annotations

from pathlib import Path

from onnxforge.bench.process import SERVING, ServerProcess
from tests.conftest import REPO_ROOT


class ServeProcess(ServerProcess):
    def __init__(
        self, repository: Path, *extra: str, pattern: str = SERVING, http: bool = False
    ) -> None:
        super().__init__(repository, *extra, threads=1, http=http, pattern=pattern, cwd=REPO_ROOT)
