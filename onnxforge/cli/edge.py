"""``onnxforge export-edge``: ONNX Runtime's ``.ort`` file, its operator list and a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxforge.cli.common import json_option, repository_option, say


@click.command("export-edge")
@click.argument("model")
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write <name>.ort, required_operators.config and manifest.json into: "
    "one model per folder (a folder holding another model's export is refused).",
)
@click.option(
    "--target-platform",
    type=click.Choice(["arm", "amd64"]),
    default="arm",
    show_default=True,
    help="CPU the file is for: arm fuses int8-activation QDQ groups as ONNX Runtime does on "
    "ARM; amd64 leaves them to x86's uint8 kernels and allows the x86-only NCHWc layout.",
)
@click.option(
    "--optimization-style",
    type=click.Choice(["fixed", "runtime"]),
    default="fixed",
    show_default=True,
    help="fixed: optimize for the CPU now; runtime: save optimizations to replay on the "
    "device (for NNAPI / CoreML; needs session.enable_saved_runtime_optimizations=1).",
)
@repository_option
@json_option
def export_edge(
    model: str,
    out_dir: Path,
    target_platform: str,
    optimization_style: str,
    repository: Path,
    as_json: bool,
) -> None:
    """Convert MODEL (a .onnx file, or a model name in the repository) for edge devices.

    Writes ONNX Runtime's .ort file, the operator list for a reduced ONNX Runtime build and
    manifest.json (inputs, outputs, variant, opset, sha256 and size of each file, and the
    accuracy the file records).
    """
    from onnxforge.builder.edge import MANIFEST
    from onnxforge.builder.edge import export_edge as export
    from onnxforge.builder.onnxfile import locate

    source = locate(model, repository)
    manifest = export(source, out_dir, target_platform, optimization_style)
    if as_json:
        click.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    files = [entry for entry in manifest["files"].values()]
    sizes = [(entry["file"], entry["bytes"]) for entry in files]
    sizes.append((MANIFEST, (out_dir / MANIFEST).stat().st_size))
    width = max(len(str(out_dir / name)) for name, _ in sizes)
    for name, size in sizes:
        say(f"{out_dir / name!s:<{width}}  {size:>10,} bytes")
    operators = manifest["operators"]
    domains = sorted({op["domain"] for op in operators})
    ort = manifest["onnxruntime"]
    say(
        f"{manifest['model']} ({manifest['variant']}, {manifest['source']['bytes']:,} bytes "
        f"as .onnx): {len(operators)} operators in {', '.join(domains)} for a reduced build; "
        f"ONNX Runtime {ort['version']}, {ort['optimization_style']} optimizations "
        f"for {ort['target_platform']}"
    )
