"""The model repository's layout, shared by the builder that writes it and the server that reads it.

```
<repository>/<base>/spec.yaml            the source of truth (also spec.yml or spec.json)
<repository>/<model>/config.pbtxt        Triton's model configuration, written from the spec
<repository>/<model>/<version>/model.onnx
```

``<model>`` is ``<base>`` for fp32 and ``<base>-<variant>`` for every other variant. Version
folders are positive integers; the highest is the newest.
"""

from __future__ import annotations

import re
from pathlib import Path

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
SPEC_FILES = ("spec.yaml", "spec.yml", "spec.json")
PLATFORM = "onnxruntime_onnx"
VARIANTS = ("fp32", "fp16", "int8-dynamic", "int8-static")
QUANTIZED_VARIANTS = VARIANTS[1:]  # made from the fp32 model; each is a model of its own
# What a server accepts as a model folder's name (Triton's rule, looser than a spec's name).
MODEL_FOLDER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def model_name(base: str, variant: str) -> str:
    """fp32 keeps the plain name; every other variant is a model of its own."""
    return base if variant == "fp32" else f"{base}-{variant}"


def split_name(name: str) -> tuple[str, str]:
    """``(base, variant)`` of a model name, read from its suffix (fp32 when none)."""
    for variant in VARIANTS[1:]:
        if name.endswith(f"-{variant}"):
            return name.removesuffix(f"-{variant}"), variant
    return name, "fp32"


def spec_file(folder: Path) -> Path | None:
    """The spec in a model folder, if it has one."""
    for candidate in SPEC_FILES:
        path = folder / candidate
        if path.is_file():
            return path
    return None


def versions(folder: Path) -> list[int]:
    """The version numbers under ``folder`` that hold a model file, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in folder.iterdir()
        if child.name.isdigit()
        and int(child.name) > 0
        and child.is_dir()
        and (child / MODEL_FILE).is_file()
    )


def newest_version(folder: Path) -> int | None:
    found = versions(folder)
    return found[-1] if found else None


def version_path(repository: Path, name: str, version: int) -> Path:
    return repository / name / str(version) / MODEL_FILE


def model_path(repository: Path, name: str) -> Path:
    """The newest version's file of ``name`` (version 1's path when nothing is built yet)."""
    return version_path(repository, name, newest_version(repository / name) or 1)
