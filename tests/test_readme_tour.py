"""What the README's commands write into a checkout is ignored by git.

Nothing is run: the files are read from the README's shell blocks (the paths given to
``-o``, ``--out``, ``--report``, ``--plot``, ``--save``, ``--graph``, ``np.save`` and ``>``)
and ``git check-ignore`` is asked about each, and about a file inside each folder.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

SHELL_BLOCK = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.DOTALL)
WRITTEN = re.compile(
    r"""(?:\s-o\s+|--out\s+|--report\s+|--plot\s+|--save\s+|--graph\s+|\s>\s+|np\.save\(['"])"""
    r"""([^\s'"`)]+)"""
)
# What the tour leaves when run as written (checked by hand in a scratch clone): these
# must be among the paths read from the README, so that the reading stays honest.
TOUR_LEAVES = {"edge/", "wide-int8.onnx", "x.npy", "required_operators.config"}


def written_paths() -> set[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return {
        match.group(1) for block in SHELL_BLOCK.findall(text) for match in WRITTEN.finditer(block)
    }


def ignored(path: str) -> bool:
    done = subprocess.run(
        ["git", "check-ignore", "--quiet", path], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode in (0, 1), done.stderr  # 128: not a checkout, or a git error
    return done.returncode == 0


pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (REPO_ROOT / ".git").exists(),
    reason="needs git and a git checkout",
)


def test_the_readme_names_what_the_tour_leaves() -> None:
    assert written_paths() >= TOUR_LEAVES


@pytest.mark.parametrize("path", sorted(written_paths()))
def test_what_a_readme_command_writes_is_ignored(path: str) -> None:
    # A folder's files too: "edge/" must hide "edge/<model>/manifest.json".
    for candidate in (path, f"{path.rstrip('/')}/manifest.json") if "." not in path else (path,):
        assert ignored(candidate), f"{candidate} (written by a command in README.md)"


def test_sources_are_not_ignored() -> None:
    for path in ("README.md", "models/digits-mlp/spec.yaml", "onnxforge/cli/__init__.py"):
        assert not ignored(path), path
