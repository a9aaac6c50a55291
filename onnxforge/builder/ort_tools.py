"""ONNX Runtime's own tools, run quietly for ``export-edge``: its ``.ort`` converter and the
operator list of a reduced build, read back with its own parser; the file checked to load.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from onnxforge.builder.errors import ArtifactError, describe
from onnxforge.builder.onnxgraph import graph_inputs

# The converter's own switch (an environment variable); its default is "all".
_LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
_ORT_DEFAULT_LOG_SEVERITY = 2  # WARNING: ONNX Runtime's default, restored after converting
_TOOL_LOGGER = "ort_format_model.utils"


def ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def convert(path: Path, staged_model: Path, staged: Path, target_platform: str, style: str) -> str:
    """Run ORT's converter on the folder holding ``staged_model`` (a copy of ``path``) into
    ``staged``; return the optimization level used."""
    with quiet_ort_tools():
        from onnxruntime.tools.convert_onnx_models_to_ort import (
            OptimizationStyle,
            convert_onnx_models_to_ort,
        )

        try:
            convert_onnx_models_to_ort(
                staged_model.parent,
                output_dir=staged,
                optimization_styles=[OptimizationStyle[style.capitalize()]],
                target_platform=target_platform,
            )
        except Exception as error:
            # Name the user's file, not the temporary copy the converter read.
            reason = one_line(error).replace(str(staged_model), str(path))
            raise ArtifactError(
                f"{path}: ONNX Runtime cannot convert it to the .ort format: {reason}"
            ) from None
    return os.getenv(_LEVEL_VARIABLE, "all")


@contextlib.contextmanager
def quiet_ort_tools() -> Iterator[None]:
    """Keep onnxforge's output clean while ORT's converter runs.

    The converter prints progress to stdout; its C++ sessions log warnings to stderr through
    ONNX Runtime's default logger; ``onnxruntime.tools.logger`` calls
    ``logging.basicConfig`` when imported (installing a handler on the root logger) and logs
    at INFO level through it; and its model reader leaks a file handle.
    """
    import onnxruntime

    root = logging.getLogger()
    handlers = list(root.handlers)
    tool_log = logging.getLogger(_TOOL_LOGGER)
    tool_level = tool_log.level
    onnxruntime.set_default_logger_severity(3)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # OrtFormatModelProcessor reads the .ort file with open(...).read() and never
            # closes it: a ResourceWarning (an error where warnings are errors, as in tests).
            warnings.simplefilter("ignore", ResourceWarning)
            # Import (if not yet imported) under the same guard, then take back its handler.
            import onnxruntime.tools.ort_format_model

            for handler in root.handlers:
                if handler not in handlers:
                    root.removeHandler(handler)
            tool_log.setLevel(logging.WARNING)
            yield
    finally:
        tool_log.setLevel(tool_level)
        onnxruntime.set_default_logger_severity(_ORT_DEFAULT_LOG_SEVERITY)


def one_line(error: BaseException) -> str:
    text = describe(error)
    # "[ONNXRuntimeError] : 1 : FAIL : reason" -> "reason"
    return re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)


def only_file(path: Path, folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        names = ", ".join(file.name for file in found) or "none"
        raise ArtifactError(
            f"{path}: ONNX Runtime's converter wrote an unexpected set of {pattern} files: {names}"
        )
    return found[0]


def tidy_config(config: Path) -> None:
    """Replace the temporary absolute paths in the converter's comment lines by file names."""
    lines = []
    for line in config.read_text(encoding="utf-8").splitlines():
        if line.startswith("# - "):
            source = Path(line[4:])
            line = f"# - {source.name}"
            if source.parent != config.parent:  # Runtime style's second, temporary conversion
                line += " (converted without runtime optimizations; not kept)"
        lines.append(line)
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def operators(config: Path) -> list[dict[str, Any]]:
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    required, _ = parse_config(str(config))
    opsets: dict[tuple[str, str], set[int]] = {}
    for domain, by_opset in (required or {}).items():
        for opset, ops in by_opset.items():
            for op in ops:
                opsets.setdefault((domain, op), set()).add(int(opset))
    return [
        {"domain": domain, "op_type": op, "opsets": sorted(versions)}
        for (domain, op), versions in sorted(opsets.items())
    ]


def check_loads(path: Path, ort_file: Path, model: onnx.ModelProto) -> None:
    """The .ort file loads in ONNX Runtime and has the source's inputs and outputs."""
    from onnxforge.builder.runtime import session

    try:
        loaded = session(str(ort_file), threads=1)
    except Exception as error:
        raise ArtifactError(
            f"{path}: the converted .ort file does not load: {one_line(error)}"
        ) from None
    expected = ([v.name for v in graph_inputs(model)], [v.name for v in model.graph.output])
    found = ([v.name for v in loaded.get_inputs()], [v.name for v in loaded.get_outputs()])
    if found != expected:
        raise ArtifactError(
            f"{path}: the .ort file's inputs/outputs {found} differ from the model's {expected}"
        )
