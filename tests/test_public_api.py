"""The public surface, pinned: every ``__all__`` of the package, and one import name.

Each public module (no ``_`` in its dotted name) that defines ``__all__`` is listed in
``PUBLIC`` with the names it exports. A name added to or removed from an ``__all__``, or a
module that starts or stops defining one, fails here until this list says so too: a change
of the public surface is a conscious one.

And every module lives under ``onnxforge``: a user's own ``builder.py`` and ``server.py``
neither shadow ours nor are shadowed by anything we install.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import onnxforge

PUBLIC: dict[str, list[str]] = {
    "onnxforge": ["__version__"],
    "onnxforge.cpus": [
        "affinity_cpus",
        "cgroup_cpus",
        "intra_op_threads",
        "physical_cores",
        "usable_cpus",
    ],
    "onnxforge.bench": [
        "Level",
        "Load",
        "Outcome",
        "ServerError",
        "ServerProcess",
        "drive",
        "levels_table",
        "machine_busy",
        "machine_info",
        "markdown_table",
        "model_inputs",
        "percentiles_ms",
        "plot_levels",
        "print_table",
        "process_cpu_seconds",
        "process_status",
        "process_tree",
        "process_tree_cpu_seconds",
        "process_tree_rss_kib",
        "run_level",
        "software_versions",
        "table",
        "usable_cpus",
        "wait_quiet",
        "write_json",
    ],
    "onnxforge.builder": [
        "ArtifactError",
        "Layer",
        "OnnxforgeError",
        "Spec",
        "SpecError",
        "UnsupportedError",
        "build",
        "load_spec",
        "reference",
    ],
    "onnxforge.builder.emulate": [
        "dynamic_quantization",
        "forward",
        "forward_quantized",
        "quantize_linear",
        "quantized_activations",
    ],
    "onnxforge.builder.onnxfile": ["NOT_BUILT", "NOT_FOUND", "OnnxFile", "locate", "read"],
    "onnxforge.builder.onnxgraph": [
        "Graph",
        "dtype_name",
        "graph_inputs",
        "nbytes",
        "opsets",
        "value_dims",
    ],
    "onnxforge.builder.repository": [
        "Artifact",
        "REBUILD_ADVICE",
        "Written",
        "artifacts",
        "calibration_file",
        "model_name",
        "model_path",
        "prune",
        "quantize_options",
        "read_model",
        "stale_props",
        "staleness",
        "validation_file",
        "write",
        "write_config",
        "write_file",
    ],
    "onnxforge.builder.verify": [
        "assess_variant",
        "check_outputs",
        "load_inputs",
        "sample_inputs",
        "verify_model",
        "verify_variant",
    ],
    "onnxforge.client": [
        "AsyncInferenceClient",
        "Connection",
        "DeadlineExceeded",
        "InferenceClient",
        "InferenceServerError",
        "InvalidInput",
        "InvalidResponse",
        "ModelInfo",
        "ModelNotFound",
        "PermissionDenied",
        "ResourceExhausted",
        "StreamResult",
        "Unauthenticated",
        "Unavailable",
        "decode_outputs",
        "infer_request",
    ],
    "onnxforge.client.connection": ["Connection", "DEFAULT_PORT", "address"],
    "onnxforge.cluster": ["SERVING", "RayOptions", "serve_on_ray"],
    "onnxforge.client.errors": [
        "DeadlineExceeded",
        "InferenceServerError",
        "InvalidInput",
        "InvalidResponse",
        "ModelNotFound",
        "PermissionDenied",
        "ResourceExhausted",
        "Unauthenticated",
        "Unavailable",
        "error_for",
    ],
    "onnxforge.protocol.datatypes": [
        "DATATYPES",
        "DESCRIBED_ONLY",
        "Datatype",
        "KNOWN",
        "datatype",
        "from_numpy",
        "from_onnx",
        "from_ort",
    ],
    "onnxforge.protocol.headers": ["ACCURACY", "SPEC_SHA256", "VARIANT"],
    "onnxforge.protocol.tensors": [
        "CodecError",
        "INPUTS",
        "InputTensor",
        "MAX_DIMS",
        "MAX_ELEMENTS",
        "MessageError",
        "OUTPUTS",
        "OutputTensor",
        "Role",
        "TensorError",
        "check_shape",
        "decode_tensor",
        "decode_tensors",
        "encode_tensor",
        "encode_tensors",
    ],
    "onnxforge.server": [],
    "onnxforge.server.convert": [
        "DATATYPES",
        "Datatype",
        "InputTensor",
        "MAX_DIMS",
        "MAX_ELEMENTS",
        "OutputTensor",
        "check_shape",
        "datatype",
        "from_numpy",
        "from_onnx",
        "from_ort",
        "input_array",
        "input_arrays",
        "output_tensor",
        "output_tensors",
    ],
    "onnxforge.server.dataplane": [
        "DataPlane",
        "DataPlaneAPI",
        "EXTENSIONS",
        "IndexEntry",
        "InferRequest",
        "Inference",
        "ModelMetadata",
        "RequestedOutput",
        "ServerMetadata",
    ],
    "onnxforge.server.model_config": ["BACKEND", "config_json"],
    "onnxforge.server.health": ["HEALTH_SERVICE", "LIVE_SERVICE", "HealthServicer", "HealthSync"],
    "onnxforge.server.reflection": ["REFLECTION_SERVICE", "ReflectionServicer"],
    "onnxforge.server.pacing": ["PacedExecutor", "waiting"],
    "onnxforge.server.loop": ["ENV", "loop_factory", "name", "run"],
    "onnxforge.server.affinity": ["loop_cpus", "pin_loop", "pinned_cpu", "pinned_threads", "unpin"],
    "onnxforge.protocol.pool": ["POOL"],
    "onnxforge.server.errors": [
        "Code",
        "DeadlineExceeded",
        "HTTP_STATUS",
        "InvalidInput",
        "InvalidOutput",
        "InvalidRequest",
        "LoadFailed",
        "ModelNotFound",
        "ModelNotReady",
        "ModelShuttingDown",
        "PermissionDenied",
        "QueueFull",
        "ServingError",
        "TooManyRows",
        "Unauthenticated",
        "Unavailable",
    ],
    "onnxforge.server.registry": [
        "Entry",
        "PLATFORM",
        "Registry",
        "Serving",
        "State",
        "Tensor",
        "Version",
    ],
    "onnxforge.server.rest": ["HttpServer", "start_http"],
    "onnxforge.server.rest.codec": [
        "EncodedResponse",
        "HEADER_LENGTH",
        "HttpInferRequest",
        "decode_request",
        "encode_response",
        "plain_parameters",
    ],
    "onnxforge.server.rest.errors": [
        "BodyTooLarge",
        "INTERNAL_MESSAGE",
        "error_response",
        "middleware",
    ],
    "onnxforge.server.rest.routes": ["EXTENSIONS", "Routes"],
    "onnxforge.server.rest.server": ["HttpServer", "start_http"],
}


def _public_modules() -> list[str]:
    """``onnxforge`` and every module under it, but private ones and generated code."""
    names = ["onnxforge"]
    for found in pkgutil.walk_packages(onnxforge.__path__, "onnxforge."):
        parts = found.name.split(".")
        if any(part.startswith("_") for part in parts) or "generated" in parts:
            continue
        names.append(found.name)
    return names


def _declared() -> dict[str, list[str]]:
    """Module name -> its ``__all__``, for each public module that defines one."""
    declared = {}
    for name in _public_modules():
        module = importlib.import_module(name)
        if "__all__" in vars(module):
            declared[name] = list(module.__all__)
    return declared


def test_the_modules_that_define_all_are_the_listed_ones() -> None:
    assert sorted(_declared()) == sorted(PUBLIC)


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_all_is_exactly_the_intended_public_surface(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{module_name}.__all__ repeats a name"
    assert sorted(exported) == sorted(PUBLIC[module_name])
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == [], f"{module_name}.__all__ names what the module does not have"


# A user's own modules with our old top-level names; importing either is an error that
# names the file, so any import of them by onnxforge would fail loudly.
USER_FILE = 'raise ImportError("the user\'s own {name}.py was imported")\n'


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    for name in ("builder", "server"):
        (tmp_path / f"{name}.py").write_text(USER_FILE.format(name=name))
    return tmp_path


def _python(folder: Path, code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", ["builder", "server"])
def test_nothing_installs_a_top_level_builder_or_server(user_folder: Path, name: str) -> None:
    # -I: the folder is not on the path, only what is installed is.
    result = _python(user_folder, f"import {name}", "-I")
    assert result.returncode == 1
    assert f"ModuleNotFoundError: No module named '{name}'" in result.stderr


def test_a_users_builder_and_server_files_shadow_nothing_of_ours(user_folder: Path) -> None:
    # The folder first on the path, as for a script the user runs there.
    code = """
        import onnxforge.builder, onnxforge.client, onnxforge.server.app, onnxforge.cli
        assert callable(onnxforge.builder.load_spec)
        assert callable(onnxforge.client.InferenceClient)
        for name in ("builder", "server"):
            try:
                __import__(name)
            except ImportError as error:
                print(error)
    """
    result = _python(user_folder, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "the user's own builder.py was imported",
        "the user's own server.py was imported",
    ]
