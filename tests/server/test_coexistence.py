"""onnxforge beside tritonclient: one process, one server, one protobuf runtime.

Both clients imported in one process (either order) and both answering from the same real
``onnxforge serve``; onnxforge's generated code kept out of protobuf's default descriptor
pool (where tritonclient's ``inference.*`` messages live); and our copy of Triton's
``ModelConfig`` held to the descriptor tritonclient itself ships.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor

from onnxforge.builder import load_spec, reference
from onnxforge.protocol.generated import inference_pb2
from tests.conftest import REPO_ROOT
from tests.server.conftest import make_repository
from tests.server.processes import ServeProcess

SCRIPT = REPO_ROOT / "tests" / "server" / "coexist_clients.py"
GENERATED = REPO_ROOT / "onnxforge" / "protocol" / "generated"
OUR_FILES = ("inference.proto", "grpc_health/v1/health.proto")
OUR_FILES += ("grpc_reflection/v1alpha/reflection.proto",)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    repository = make_repository(tmp_path_factory.mktemp("coexist"))
    with ServeProcess(repository) as running:
        yield running


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("order", ["triton-first", "onnxforge-first"])
def test_both_clients_in_one_process_get_the_references_answers(
    server: ServeProcess, tmp_path: Path, order: str
) -> None:
    x = np.random.default_rng(12).normal(size=(4, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run(
        [sys.executable, "-W", "error", str(SCRIPT), order, server.url, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    want = reference.run(load_spec(REPO_ROOT / "models" / "digits-mlp" / "spec.yaml"), x)
    for client in ("onnxforge", "triton"):
        for output in ("probabilities", "hidden"):
            got = np.load(tmp_path / f"{client}.{output}.npy")
            np.testing.assert_allclose(got, want[output], atol=1e-5, err_msg=f"{client} {output}")
    assert found["triton_live"] is True
    assert found["onnxforge_variant"] == "fp32"
    ours, theirs = found["onnxforge_config"], found["triton_config"]
    assert ours["name"] == theirs["name"] == "digits-mlp"
    # tritonclient's JSON writes 64-bit numbers as strings, ours as numbers (Triton's HTTP).
    assert [i["dims"] for i in ours["input"]] == [[64]]
    assert [i["dims"] for i in theirs["input"]] == [["64"]]
    assert ours["max_batch_size"] == theirs["max_batch_size"] == 64


def test_the_generated_modules_leave_the_default_pool_alone() -> None:
    code = f"""
from google.protobuf import descriptor_pool
import onnxforge.client, onnxforge.server.app
from onnxforge.protocol.generated import (
    health_pb2_grpc, inference_pb2, inference_pb2_grpc, reflection_pb2_grpc,
)
from onnxforge.protocol.pool import POOL
default = descriptor_pool.Default()
assert inference_pb2.DESCRIPTOR.pool is POOL and POOL is not default
for name in {OUR_FILES!r}:
    POOL.FindFileByName(name)
    try:
        default.FindFileByName(name)
    except KeyError:
        continue
    raise SystemExit(f"{{name}} is in the default pool")
for symbol in ("inference.ServerLiveRequest", "inference.ModelConfig",
               "grpc.health.v1.HealthCheckRequest"):
    try:
        default.FindMessageTypeByName(symbol)
    except KeyError:
        continue
    raise SystemExit(f"{{symbol}} is in the default pool")
import tritonclient.grpc  # registers inference.* in the default pool: no clash with ours
default.FindMessageTypeByName("inference.ServerLiveRequest")
print("ok")
"""
    done = run(code)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_the_generated_modules_register_in_our_pool_only() -> None:
    for module in sorted(GENERATED.glob("*_pb2.py")):
        text = module.read_text()
        assert "_descriptor_pool.Default()" not in text, module.name
        assert "_POOL.AddSerializedFile(" in text, module.name
        assert "ValidateProtobufRuntimeVersion" not in text, module.name


def _fields(descriptor: Descriptor) -> dict[str, tuple[int, int, str]]:
    def kind(field: Any) -> str:
        target = field.message_type or field.enum_type
        return target.full_name if target is not None else ""

    return {f.name: (f.number, f.type, kind(f)) for f in descriptor.fields}


def test_our_model_config_is_a_part_of_tritons_own() -> None:
    from tritonclient.grpc import model_config_pb2, service_pb2

    theirs_by_file = {"model_config": model_config_pb2, "service": service_pb2}
    pending = ["ModelConfigRequest", "ModelConfigResponse"]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        ours = inference_pb2.DESCRIPTOR.pool.FindMessageTypeByName(f"inference.{name}")
        theirs = next(
            module.DESCRIPTOR.pool.FindMessageTypeByName(f"inference.{name}")
            for module in theirs_by_file.values()
        )
        mine, tritons = _fields(ours), _fields(theirs)
        assert {field: tritons.get(field) for field in mine} == mine, name
        for field in ours.fields:
            if field.message_type is not None:
                pending.append(field.message_type.full_name.removeprefix("inference."))
            if field.enum_type is not None:
                their_enum = theirs.fields_by_name[field.name].enum_type
                values = {v.name: v.number for v in field.enum_type.values}
                assert values == {v.name: v.number for v in their_enum.values}, field.full_name
    assert {"ModelConfig", "ModelInput", "ModelInstanceGroup"} <= seen
