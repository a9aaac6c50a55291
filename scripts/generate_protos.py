"""Generate the gRPC code in ``onnxforge/protocol/generated/`` from ``protos/inference.proto``.

Usage (from anywhere; paths are relative to the repository root)::

    python scripts/generate_protos.py          # (re)write onnxforge/protocol/generated/*.py{,i}
    python scripts/generate_protos.py --check  # exit 1 if the checked-in files drifted

The generator is ``grpc_tools.protoc`` (package ``grpcio-tools``, pinned exactly in
``pyproject.toml`` because its version is written into the output). The generated gRPC
module imports its message module package-relatively (``from . import inference_pb2``)
so that ``onnxforge.protocol.generated`` works as a package without touching ``sys.path``.

``--check`` regenerates into a temporary folder and compares byte for byte; the test
suite runs it (tests/server/test_protos.py), so a change to the .proto without a
regeneration, or a different grpcio-tools, fails the tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "protos"
PROTO_FILE = "inference.proto"
OUT_DIR = REPO_ROOT / "onnxforge" / "protocol" / "generated"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")

_ABSOLUTE_IMPORT = "import inference_pb2 as inference__pb2\n"
_RELATIVE_IMPORT = "from . import inference_pb2 as inference__pb2\n"


def _tools_version() -> str:
    try:
        return version("grpcio-tools")
    except PackageNotFoundError:
        return "not installed"


def generate(out_dir: Path) -> None:
    """Run protoc on the .proto file into ``out_dir`` and make the gRPC import relative."""
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("error: grpcio-tools is not installed (pip install -e '.[test]')")

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_DIR / PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        sys.exit(f"error: protoc failed on {PROTO_DIR / PROTO_FILE}")

    grpc_module = out_dir / "inference_pb2_grpc.py"
    text = grpc_module.read_text(encoding="utf-8")
    if text.count(_ABSOLUTE_IMPORT) != 1:
        sys.exit(f"error: expected one line {_ABSOLUTE_IMPORT.strip()!r} in {grpc_module}")
    grpc_module.write_text(text.replace(_ABSOLUTE_IMPORT, _RELATIVE_IMPORT), encoding="utf-8")


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
            f"onnxforge/protocol/generated/ is out of date with protos/{PROTO_FILE} "
            f"(grpcio-tools {_tools_version()}): {', '.join(drifted)} differ; "
            "run: python scripts/generate_protos.py",
            file=sys.stderr,
        )
        return 1
    print(f"onnxforge/protocol/generated/ matches protos/{PROTO_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=f"Generate onnxforge/protocol/generated/ from protos/{PROTO_FILE} "
        "with grpc_tools.protoc."
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
