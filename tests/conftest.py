"""Shared test helpers: write specs to disk, run the command line in-process."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from onnxforge.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = REPO_ROOT / "models"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``onnxforge ARGS...`` in this process; returns exit code, stdout and stderr."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(arg) for arg in args])
        captured = capsys.readouterr()
        code = exit_info.value.code
        return CliResult(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec document (and optionally its weights) into a fresh folder."""

    counter = iter(range(10**6))

    def write(
        document: Mapping[str, Any],
        weights: Mapping[str, np.ndarray] | None = None,
        file_name: str = "spec.yaml",
    ) -> Path:
        folder = tmp_path / f"spec{next(counter)}"
        folder.mkdir()
        document = dict(document)
        if weights is not None:
            np.savez(folder / "weights.npz", **weights)
            document.setdefault("weights", "weights.npz")
        path = folder / file_name
        if file_name.endswith(".json"):
            path.write_text(json.dumps(document))
        else:
            path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return write
