"""Generate the gRPC code in ``onnxforge/protocol/generated/`` from ``protos/``.

Usage (from anywhere; paths are relative to the repository root)::

    python scripts/generate_protos.py          # (re)write onnxforge/protocol/generated/*.py{,i}
    python scripts/generate_protos.py --check  # exit 1 if the checked-in files drifted

Three files: ``inference.proto`` (the Open Inference Protocol, with Triton's ModelConfig),
and gRPC's own ``grpc_health/v1/health.proto`` and ``grpc_reflection/v1alpha/reflection.proto``,
which onnxforge serves from its own code. The generator is ``grpc_tools.protoc`` (package
``grpcio-tools``, pinned exactly in ``pyproject.toml``'s test extra because its version is
written into the output). protoc's output is then post-processed, so that the modules:

- register their messages in onnxforge's own descriptor pool
  (``onnxforge.protocol.pool.POOL``) instead of protobuf's default pool, where
  tritonclient's ``inference.*`` messages live too (both in one process would clash);
- carry no protobuf runtime-version check, so that one set of files loads under
  protobuf 5.x, 6.x and 7.x (tritonclient[grpc] pins protobuf below 7);
- sit flat in one package, each gRPC module importing its message module
  package-relatively (``from . import inference_pb2``), without touching ``sys.path``.

``--check`` regenerates into a temporary folder and compares byte for byte; the test
suite runs it (tests/server/test_protos.py), so a change to a .proto without a
regeneration, or a different grpcio-tools, fails the tests.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "protos"
PROTO_FILES = (
    "inference.proto",
    "grpc_health/v1/health.proto",
    "grpc_reflection/v1alpha/reflection.proto",
)
OUT_DIR = REPO_ROOT / "onnxforge" / "protocol" / "generated"
PACKAGE = "onnxforge.protocol.generated"
GENERATED = tuple(
    f"{Path(proto).stem}{suffix}"
    for proto in PROTO_FILES
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
)

_HEADER = (
    "# Post-processed by scripts/generate_protos.py: registered in onnxforge's own\n"
    "# descriptor pool (onnxforge/protocol/pool.py), no protobuf runtime-version check.\n"
)
_RUNTIME_IMPORT = "from google.protobuf import runtime_version as _runtime_version\n"
_RUNTIME_CHECK = re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:  .*\n)*?\)\n")
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = "_POOL.AddSerializedFile("
_POOL_IMPORT = "from onnxforge.protocol.pool import POOL as _POOL\n"
_BUILD_TOP = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'[\w.]+'")
_GRPC_IMPORT = re.compile(r"^(?:from [\w.]+ )?import (\w+_pb2) as (\w+)$", re.MULTILINE)


def _tools_version() -> str:
    try:
        return version("grpcio-tools")
    except PackageNotFoundError:
        return "not installed"


def _replace_once(text: str, old: str, new: str, where: Path) -> str:
    if text.count(old) != 1:
        sys.exit(f"error: expected one {old.strip()!r} in {where} (protoc's output changed?)")
    return text.replace(old, new)


def _messages_module(path: Path, module: str) -> str:
    """A ``*_pb2.py`` as protoc wrote it, moved to onnxforge's pool, without the check."""
    text = path.read_text(encoding="utf-8")
    text = _replace_once(text, _RUNTIME_IMPORT, _POOL_IMPORT, path)
    text, checks = _RUNTIME_CHECK.subn("", text)
    if checks != 1:
        sys.exit(f"error: expected one runtime-version check in {path}")
    text = _replace_once(text, _DEFAULT_POOL, _OWN_POOL, path)
    text, named = _BUILD_TOP.subn(rf"\1'{PACKAGE}.{module}'", text)
    if named != 1:
        sys.exit(f"error: expected one BuildTopDescriptorsAndMessages call in {path}")
    first, rest = text.split("\n", 1)
    return f"{first}\n{_HEADER}{rest}"


def _grpc_module(path: Path) -> str:
    """A ``*_pb2_grpc.py`` importing its messages module from the same package."""
    text = path.read_text(encoding="utf-8")
    text, imports = _GRPC_IMPORT.subn(r"from . import \1 as \2", text)
    if imports != 1:
        sys.exit(f"error: expected one import of a *_pb2 module in {path}")
    return text


def generate(out_dir: Path) -> None:
    """Run protoc on the .proto files into ``out_dir``, post-processed (module docstring)."""
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("error: grpcio-tools is not installed (pip install -e '.[test]')")

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        args = [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *(str(PROTO_DIR / proto) for proto in PROTO_FILES),
        ]
        if protoc.main(args) != 0:
            sys.exit(f"error: protoc failed on {', '.join(PROTO_FILES)} in {PROTO_DIR}")
        for proto in PROTO_FILES:
            stem = str(Path(proto).with_suffix(""))
            name = Path(proto).stem
            written = {
                f"{name}_pb2.py": _messages_module(raw / f"{stem}_pb2.py", f"{name}_pb2"),
                f"{name}_pb2.pyi": (raw / f"{stem}_pb2.pyi").read_text(encoding="utf-8"),
                f"{name}_pb2_grpc.py": _grpc_module(raw / f"{stem}_pb2_grpc.py"),
            }
            for file, text in written.items():
                (out_dir / file).write_text(text, encoding="utf-8")


def check() -> int:
    """Regenerate into a temporary folder; 0 when every file matches, else 1."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        drifted = [
            name
            for name in GENERATED
            if not (OUT_DIR / name).is_file()
            or (OUT_DIR / name).read_bytes() != (fresh / name).read_bytes()
        ]
    if drifted:
        print(
            "onnxforge/protocol/generated/ is out of date with protos/ "
            f"(grpcio-tools {_tools_version()}): {', '.join(drifted)} differ; "
            "run: python scripts/generate_protos.py",
            file=sys.stderr,
        )
        return 1
    print("onnxforge/protocol/generated/ matches protos/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate onnxforge/protocol/generated/ from protos/ with grpc_tools.protoc."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary folder; exit 1 if onnxforge/protocol/generated/ differs",
    )
    options = parser.parse_args(argv)
    if options.check:
        return check()
    generate(OUT_DIR)
    print(f"wrote {', '.join(GENERATED)} to {OUT_DIR.relative_to(REPO_ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
