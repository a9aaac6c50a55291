"""Edge export: the .ort file computes what the .onnx file does; the manifest tells the truth."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxruntime.tools.reduced_build_config_parser import parse_config

from onnxforge.builder import build, load_spec, metadata, reference, runtime
from onnxforge.builder.accuracy import figures
from onnxforge.builder.edge import MANIFEST, edge_name, export_edge
from onnxforge.builder.errors import ArtifactError
from onnxforge.builder.quantize import quantize
from onnxforge.builder.samples import sample_inputs
from onnxforge.builder.spec import Spec
from tests.conftest import MODELS, REPO_ROOT, CliResult

VARIANTS = ("fp32", "fp16", "int8-dynamic", "int8-static")
DIGITS = MODELS / "digits-mlp" / "spec.yaml"

# The kernels each variant's graph must end up on after ONNX Runtime's Fixed optimizations:
# MatMul+Add(+Relu) becomes Gemm / FusedGemm, the int8-dynamic pattern DynamicQuantizeMatMul,
# the int8-static QDQ pattern QGemm between QuantizeLinear / DequantizeLinear.
# QGemm only where ORT's QDQ selectors take the group (the digits model's shapes and Relu);
# elsewhere the DequantizeLinear'd weights stay and feed a float Gemm.
EXPECTED_OPS = {
    "fp32": {("ai.onnx", "Gemm"), ("com.microsoft", "FusedGemm")},
    "fp16": {("ai.onnx", "Gemm"), ("ai.onnx", "Cast")},
    "int8-dynamic": {("com.microsoft", "DynamicQuantizeMatMul")},
    "int8-static": {("ai.onnx", "QuantizeLinear"), ("ai.onnx", "DequantizeLinear")},
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _random_document(seed: int) -> dict[str, Any]:
    """A small spec with a seeded choice of widths, activations and normalisation layers."""
    rng = np.random.default_rng(seed)
    activations = ["relu", "tanh", "gelu", "sigmoid", {"name": "leaky_relu", "alpha": 0.1}]
    layers: list[dict[str, Any]] = [{"type": "layernorm"}]
    for index in range(int(rng.integers(2, 4))):
        layers.append(
            {
                "type": "dense",
                "units": int(rng.integers(4, 17)),
                "activation": activations[int(rng.integers(len(activations)))],
                "name": f"h{index}",
            }
        )
        if rng.random() < 0.5:
            layers.append({"type": "batchnorm"})
    layers.append({"type": "dense", "units": 5, "activation": "softmax"})
    return {
        "name": "random-edge",
        "input": {"name": "x", "shape": [int(rng.integers(3, 12))]},
        "output": {"name": "scores"},
        "expose": ["h0"],
        "seed": seed,
        "layers": layers,
    }


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model built with every variant by ``onnxforge build`` (real metadata)."""
    from onnxforge.cli import main

    repo = tmp_path_factory.mktemp("repo")
    with pytest.raises(SystemExit) as done:
        main(["build", str(DIGITS), "-r", str(repo), "--variants", ",".join(VARIANTS), "--json"])
    assert done.value.code == 0
    return repo


@pytest.fixture(scope="module")
def random_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Spec, dict[str, Path]]:
    """A random spec's fp32 file and its variants, made with builder.quantize and saved."""
    folder = tmp_path_factory.mktemp("random")
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(_random_document(seed=11)))
    spec = load_spec(spec_path)
    fp32 = build(spec)
    rows = sample_inputs(spec, 128, seed=3)
    paths = {}
    for variant in VARIANTS:
        model = fp32 if variant == "fp32" else quantize(fp32, variant, rows)
        metadata.set_props(model, {metadata.VARIANT: variant})
        paths[variant] = folder / f"random-edge-{variant}.onnx"
        onnx.save(model, str(paths[variant]))
    return spec, paths


def _source(
    which: str, variant: str, digits_repo: Path, random_models: tuple[Spec, dict[str, Path]]
) -> tuple[Spec, Path]:
    if which == "digits":
        name = "digits-mlp" if variant == "fp32" else f"digits-mlp-{variant}"
        return load_spec(DIGITS), digits_repo / name / "1" / "model.onnx"
    return random_models[0], random_models[1][variant]


@pytest.fixture(scope="module")
def exported(
    digits_repo: Path,
    random_models: tuple[Spec, dict[str, Path]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], tuple[Spec, Path, Path, dict[str, Any]]]:
    """Every variant of both models exported once: (spec, source, out dir, returned manifest)."""
    done = {}
    root = tmp_path_factory.mktemp("edge")
    for which in ("digits", "random"):
        for variant in VARIANTS:
            spec, source = _source(which, variant, digits_repo, random_models)
            out = root / which / variant
            done[which, variant] = (spec, source, out, export_edge(source, out))
    return done


CASES = [(which, variant) for which in ("digits", "random") for variant in VARIANTS]


IN_DISTRIBUTION = 256
REFERENCE_ATOL = {"fp32": 1e-5, "fp16": 1e-2}


def _inputs(spec: Spec) -> np.ndarray:
    """Rows from the spec's distribution, then rows ten times wider, then a row of zeros."""
    rng = np.random.default_rng(5)
    wide = (rng.normal(size=(64, *spec.input_shape)) * 10).astype(np.float32)
    zeros = np.zeros((1, *spec.input_shape), np.float32)
    return np.concatenate([sample_inputs(spec, IN_DISTRIBUTION, seed=9), wide, zeros])


@pytest.mark.parametrize(("which", "variant"), CASES)
def test_ort_file_computes_exactly_what_the_onnx_file_does(
    exported: dict[tuple[str, str], tuple[Spec, Path, Path, dict[str, Any]]],
    which: str,
    variant: str,
) -> None:
    spec, source, out, manifest = exported[which, variant]
    ort_path = out / manifest["files"]["ort"]["file"]
    # One thread each, so that no difference can come from how the work was split.
    from_onnx = runtime.session(str(source), threads=1)
    from_ort = runtime.session(str(ort_path), threads=1)
    names = [o.name for o in from_onnx.get_outputs()]
    assert [o.name for o in from_ort.get_outputs()] == names
    x = _inputs(spec)
    want = from_onnx.run(names, {spec.input_name: x})
    got = from_ort.run(names, {spec.input_name: x})
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, name
        # Measured: the same optimized graph on the same kernels, bit for bit.
        np.testing.assert_array_equal(a, b, err_msg=f"{which} {variant} {name}")
    # And the float files are the model they claim to be, not something that merely loads
    # (the int8 files' distance from the reference is test_variants' business).
    if variant in REFERENCE_ATOL:
        main = got[names.index(spec.output_names[0])]
        want_main = reference.forward(spec, x)
        np.testing.assert_allclose(main, want_main, atol=REFERENCE_ATOL[variant], rtol=0)


@pytest.mark.parametrize(("which", "variant"), CASES)
def test_manifest_describes_the_files_it_sits_beside(
    exported: dict[tuple[str, str], tuple[Spec, Path, Path, dict[str, Any]]],
    which: str,
    variant: str,
) -> None:
    _, source, out, returned = exported[which, variant]
    text = (out / MANIFEST).read_text()
    manifest = json.loads(text)
    assert manifest == returned
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    name = edge_name(source)
    assert (
        manifest["model"]
        == name
        == (source.parent.parent.name if which == "digits" else source.stem)
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.ort", "required_operators.config", MANIFEST]
    )
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left
    # Every hash and size recomputed from the bytes on disk.
    assert manifest["source"] == {
        "file": "model.onnx" if which == "digits" else source.name,
        "bytes": source.stat().st_size,
        "sha256": _sha256(source),
    }
    for entry in manifest["files"].values():
        path = out / entry["file"]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == _sha256(path)
    # Inputs, outputs, opset, IR version and metadata against the ONNX file itself.
    model = onnx.load(str(source))
    for described, values in (
        (manifest["inputs"], model.graph.input),
        (manifest["outputs"], model.graph.output),
    ):
        assert [t["name"] for t in described] == [v.name for v in values]
        for tensor, value in zip(described, values, strict=True):
            elem = value.type.tensor_type.elem_type
            assert tensor["dtype"] == helper.tensor_dtype_to_np_dtype(elem).name == "float32"
            assert tensor["datatype"] == "FP32"
            dims = [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
            assert tensor["dims"] == dims and dims[0] == "batch"
            assert tensor["shape"] == [-1, *dims[1:]]
    default = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert manifest["opset"] == default == manifest["opset_imports"]["ai.onnx"]
    assert manifest["ir_version"] == model.ir_version
    props = metadata.props(model)
    assert manifest["variant"] == props[metadata.VARIANT] == variant
    assert manifest["metadata"][metadata.SPEC_SHA256] == props[metadata.SPEC_SHA256]
    assert manifest["onnxruntime"] == {
        "version": ort.__version__,
        "optimization_style": "fixed",
        "optimization_level": "all",
        "target_platform": "arm",
    }


def _optimized_ops(source: Path, folder: Path) -> set[tuple[str, str]]:
    """The operators of the graph ONNX Runtime makes of ``source`` with the export's settings,
    read from an optimized *ONNX* file: a second route to what the .ort file should hold."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdqisint8allowed", "1")  # target arm
    ort.InferenceSession(
        str(source),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=["NchwcTransformer"],
    )
    graph = onnx.load(str(folder / "optimized.onnx")).graph
    return {(node.domain or "ai.onnx", node.op_type) for node in graph.node}


@pytest.mark.parametrize(("which", "variant"), CASES)
def test_operator_list_is_what_the_optimized_graph_runs(
    exported: dict[tuple[str, str], tuple[Spec, Path, Path, dict[str, Any]]],
    tmp_path: Path,
    which: str,
    variant: str,
) -> None:
    _, source, out, manifest = exported[which, variant]
    listed = {(op["domain"], op["op_type"]) for op in manifest["operators"]}
    assert listed == _optimized_ops(source, tmp_path)
    assert EXPECTED_OPS[variant] <= listed
    if (which, variant) == ("digits", "int8-static"):
        assert ("com.microsoft", "QGemm") in listed
    if variant != "int8-dynamic":  # the unfused integer ops are gone after fusion
        assert ("ai.onnx", "MatMulInteger") not in listed
    # The config file parses with ORT's own parser into the same list, and names no temp path.
    config = out / "required_operators.config"
    required, _ = parse_config(str(config))
    assert {(d, op) for d, by in required.items() for ops in by.values() for op in ops} == listed
    assert f"# - {manifest['files']['ort']['file']}\n" in config.read_text()
    assert str(Path(os.sep, "tmp")) not in config.read_text()
    default = manifest["opset"]
    for op in manifest["operators"]:
        assert op["opsets"] and (op["domain"] != "ai.onnx" or max(op["opsets"]) <= default)


def test_accuracy_figures_recorded_by_the_build_reach_the_manifest(
    exported: dict[tuple[str, str], tuple[Spec, Path, Path, dict[str, Any]]],
) -> None:
    for variant in VARIANTS:
        _, source, _, manifest = exported["digits", variant]
        props = metadata.props(onnx.load(str(source)))
        if variant == "fp32":
            assert manifest["accuracy"] is None and manifest["quantization"] is None
            continue
        assert manifest["accuracy"] == json.loads(props[metadata.ACCURACY])
        assert manifest["quantization"] == json.loads(props[metadata.QUANTIZATION])
        assert manifest["accuracy"]["outputs"]["probabilities"]["max_abs"] > 0
        assert metadata.ACCURACY not in manifest["metadata"]


def test_accuracy_set_on_a_file_is_carried_over(
    random_models: tuple[Spec, dict[str, Path]], tmp_path: Path
) -> None:
    spec, paths = random_models
    model = onnx.load(str(paths["int8-dynamic"]))
    x = sample_inputs(spec, 200, seed=21)
    session = runtime.session(model.SerializeToString())
    got = session.run([spec.output_names[0]], {spec.input_name: x})[0]
    measured = asdict(figures(got, reference.forward(spec, x), True))
    recorded = {"samples": 200, "outputs": {spec.output_names[0]: measured}}
    metadata.set_props(
        model, {metadata.ACCURACY: json.dumps(recorded), metadata.SPEC_SHA256: spec.sha256}
    )
    source = tmp_path / "with-accuracy.onnx"
    onnx.save(model, str(source))
    manifest = export_edge(source, tmp_path / "out")
    assert manifest["accuracy"] == recorded
    assert manifest["accuracy"]["outputs"][spec.output_names[0]]["max_abs"] == measured["max_abs"]
    assert manifest["metadata"] == {
        metadata.SPEC_SHA256: spec.sha256,
        metadata.VARIANT: "int8-dynamic",
        metadata.VERSION: metadata.props(model)[metadata.VERSION],
    }
    assert manifest["model"] == "with-accuracy"


def test_file_without_onnxforge_metadata_has_unknown_variant(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    source = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    manifest = export_edge(source, tmp_path / "out")
    assert manifest["variant"] == "unknown"
    assert manifest["accuracy"] is None and manifest["metadata"] == {}
    assert manifest["inputs"] == [
        {"name": "x", "dtype": "float32", "datatype": "FP32", "dims": ["n", 3], "shape": [-1, 3]}
    ]
    assert manifest["operators"] == [{"domain": "ai.onnx", "op_type": "Relu", "opsets": [14]}]


# ------------------------------------------------------------------ errors leave nothing behind


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    text = tmp_path / "text.onnx"
    text.write_text("name: not a model\n")
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    unknown_op = tmp_path / "unknown-op.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(unknown_op)
    )
    bad_accuracy = tmp_path / "bad-accuracy.onnx"
    model = build(load_spec(DIGITS))
    metadata.set_props(model, {metadata.ACCURACY: "{not json"})
    onnx.save(model, str(bad_accuracy))
    return {
        "missing": tmp_path / "missing.onnx",
        "garbage": garbage,
        "text": text,
        "unknown-op": unknown_op,
        "bad-accuracy": bad_accuracy,
    }


ERRORS = {
    "missing": "missing.onnx: file not found",
    "garbage": "garbage.onnx: not a readable ONNX model",
    "text": "text.onnx: not a readable ONNX model",
    "unknown-op": "unknown-op.onnx: ONNX Runtime cannot convert it to the .ort format: ",
    "bad-accuracy": "bad-accuracy.onnx: metadata onnxforge.accuracy is not a JSON object",
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path: Path, case: str) -> None:
    source = _bad_files(tmp_path)[case]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ArtifactError) as error:
        export_edge(source, tmp_path / "new" / "deeper" / "out")
    message = str(error.value)
    assert ERRORS[case] in message and "\n" not in message
    assert str(tmp_path / "new") not in message  # no temporary path in the message
    assert sorted(tmp_path.rglob("*")) == before  # no folder created, no staging left


def test_failure_leaves_an_existing_export_untouched(
    exported: dict[tuple[str, str], tuple[Spec, Path, Path, dict[str, Any]]], tmp_path: Path
) -> None:
    _, source, _, _ = exported["digits", "fp32"]
    out = tmp_path / "out"
    export_edge(source, out)
    (out / "notes.txt").write_text("mine\n")
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    # A file of the same model's name, so that the conversion runs (and fails).
    broken = tmp_path / "broken" / f"{edge_name(source)}.onnx"
    broken.parent.mkdir()
    broken.write_bytes(_bad_files(tmp_path)["unknown-op"].read_bytes())
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot convert it"):
        export_edge(broken, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("x")
    source = tmp_path / "digits.onnx"
    onnx.save(build(load_spec(DIGITS)), str(source))
    with pytest.raises(ArtifactError, match=r"out: exists and is not a folder$"):
        export_edge(source, out)
    assert out.read_text() == "x"


def test_runtime_style_then_fixed_style_replaces_the_files_in_place(
    random_models: tuple[Spec, dict[str, Path]], tmp_path: Path
) -> None:
    spec, paths = random_models
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not ours\n")
    manifest = export_edge(paths["fp32"], out, optimization_style="runtime")
    assert manifest["files"]["ort"]["file"] == "random-edge-fp32.with_runtime_opt.ort"
    assert manifest["files"]["required_operators"]["file"] == (
        "required_operators.with_runtime_opt.config"
    )
    x = _inputs(spec)
    want = runtime.session(str(paths["fp32"]), threads=1).run(None, {"x": x})
    got = runtime.session(str(out / manifest["files"]["ort"]["file"]), threads=1).run(
        None, {"x": x}
    )
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    export_edge(paths["fp32"], out)
    assert sorted(p.name for p in out.iterdir()) == [
        "keep.txt",
        MANIFEST,
        "random-edge-fp32.ort",
        "required_operators.config",
    ]


def test_amd64_target_prints_nothing(
    random_models: tuple[Spec, dict[str, Path]], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _, paths = random_models
    capfd.readouterr()
    manifest = export_edge(paths["int8-static"], tmp_path / "out", target_platform="amd64")
    # Not even ONNX Runtime's C++ warning that NCHWc makes a file hardware specific.
    assert capfd.readouterr() == ("", "")
    assert manifest["onnxruntime"]["target_platform"] == "amd64"


# ------------------------------------------------------------------ the command line


def test_cli_exports_a_repository_model_by_name(
    run_cli: Callable[..., CliResult], digits_repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "edge"
    result = run_cli("export-edge", "digits-mlp-int8-dynamic", "-r", digits_repo, "--out", out)
    assert result.code == 0 and result.err == ""
    manifest = json.loads((out / MANIFEST).read_text())
    lines = result.out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(str(out / "digits-mlp-int8-dynamic.ort"))
    assert lines[0].endswith(f"{manifest['files']['ort']['bytes']:,} bytes")
    assert f"{len(manifest['operators'])} operators" in lines[3]
    assert "Converting" not in result.out


def test_cli_json_prints_the_manifest(
    run_cli: Callable[..., CliResult], digits_repo: Path, tmp_path: Path
) -> None:
    source = digits_repo / "digits-mlp-fp16" / "1" / "model.onnx"
    out = tmp_path / "edge"
    result = run_cli("export-edge", source, "--out", out, "--json", "--target-platform", "amd64")
    assert result.code == 0 and result.err == ""
    assert json.loads(result.out) == json.loads((out / MANIFEST).read_text())


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_cli_a_second_model_never_deletes_the_first(
    run_cli: Callable[..., CliResult], digits_repo: Path, tmp_path: Path
) -> None:
    """One folder, one model: a second model's export into it is refused, the first kept."""
    out = tmp_path / "edge"
    first = run_cli("export-edge", "digits-mlp-int8-static", "-r", digits_repo, "--out", out)
    assert first.code == 0, first.err
    kept = _files(out)
    assert sorted(kept) == ["digits-mlp-int8-static.ort", MANIFEST, "required_operators.config"]

    second = run_cli("export-edge", "digits-mlp", "-r", digits_repo, "--out", out)
    assert second.code == 2 and second.out == ""
    assert second.err == (
        f"onnxforge: error: {out}: holds the edge export of 'digits-mlp-int8-static' "
        f"(one model per folder); export 'digits-mlp' into another folder, "
        f"e.g. {out / 'digits-mlp'}\n"
    )
    assert _files(out) == kept  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edge"]  # no staging left

    # Where the message says: both exports intact, side by side.
    third = run_cli("export-edge", "digits-mlp", "-r", digits_repo, "--out", out / "digits-mlp")
    assert third.code == 0, third.err
    assert _files(out) == kept
    manifests = [
        json.loads((folder / MANIFEST).read_text()) for folder in (out, out / "digits-mlp")
    ]
    assert [m["model"] for m in manifests] == ["digits-mlp-int8-static", "digits-mlp"]
    # The operator lists put together: one reduced build for both models.
    joined = tmp_path / "both.config"
    joined.write_text(
        "".join(
            (folder / "required_operators.config").read_text()
            for folder in (out, out / "digits-mlp")
        )
    )
    required, _ = parse_config(str(joined))
    assert required is not None
    both = {
        (domain, op) for domain, opsets in required.items() for ops in opsets.values() for op in ops
    }
    listed = [{(op["domain"], op["op_type"]) for op in m["operators"]} for m in manifests]
    assert both == listed[0] | listed[1]
    assert listed[0] - listed[1] and listed[1] - listed[0]  # each model needs kernels of its own


def test_cli_exporting_the_same_model_again_replaces_its_own_files(
    run_cli: Callable[..., CliResult], digits_repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "edge"
    args = ("export-edge", "digits-mlp-int8-dynamic", "-r", digits_repo, "--out", out)
    assert run_cli(*args, "--optimization-style", "runtime").code == 0
    (out / "notes.txt").write_text("the deployer's own file\n")
    assert sorted(_files(out)) == [
        "digits-mlp-int8-dynamic.with_runtime_opt.ort",
        MANIFEST,
        "notes.txt",
        "required_operators.with_runtime_opt.config",
    ]
    for _ in range(2):  # the other style's files replaced, then this style's own files
        result = run_cli(*args)
        assert result.code == 0 and result.err == ""
        files = _files(out)
        assert sorted(files) == [
            "digits-mlp-int8-dynamic.ort",
            MANIFEST,
            "notes.txt",
            "required_operators.config",
        ]
        assert files["notes.txt"] == b"the deployer's own file\n"
        manifest = json.loads(files[MANIFEST])
        assert manifest["model"] == "digits-mlp-int8-dynamic"
        for entry in manifest["files"].values():
            assert hashlib.sha256(files[entry["file"]]).hexdigest() == entry["sha256"]


@pytest.mark.parametrize("case", ["foreign-config", "foreign-ort", "not-a-manifest"])
def test_cli_a_file_no_export_of_this_model_wrote_is_not_overwritten(
    run_cli: Callable[..., CliResult], digits_repo: Path, tmp_path: Path, case: str
) -> None:
    out = tmp_path / "edge"
    out.mkdir()
    name = {
        "foreign-config": "required_operators.config",
        "foreign-ort": "digits-mlp.ort",
        "not-a-manifest": MANIFEST,
    }[case]
    (out / name).write_text("someone else's\n")
    result = run_cli("export-edge", "digits-mlp", "-r", digits_repo, "--out", out)
    assert result.code == 2 and result.out == "" and result.err.count("\n") == 1
    assert result.err.startswith(f"onnxforge: error: {out / name}: ")
    assert _files(out) == {name: b"someone else's\n"}


@pytest.mark.parametrize("case", ["missing", "garbage", "unknown-op"])
def test_cli_bad_model_exits_2_with_one_line(
    run_cli: Callable[..., CliResult], tmp_path: Path, case: str
) -> None:
    source = _bad_files(tmp_path)[case]
    out = tmp_path / "edge"
    result = run_cli("export-edge", source, "--out", out)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("onnxforge: error: ") and result.err.count("\n") == 1
    assert ERRORS[case] in result.err and "Traceback" not in result.err
    assert not out.exists()


def test_cli_unknown_name_and_bad_flag_exit_2(
    run_cli: Callable[..., CliResult], digits_repo: Path, tmp_path: Path
) -> None:
    result = run_cli("export-edge", "no-such-model", "-r", digits_repo, "--out", tmp_path / "e")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "no-such-model: no such file, and no model of that name" in result.err
    result = run_cli(
        "export-edge", "digits-mlp", "-r", digits_repo, "--out", tmp_path / "e",
        "--target-platform", "riscv",
    )  # fmt: skip
    assert result.code == 2 and result.err.count("\n") == 1 and "riscv" in result.err
    assert not (tmp_path / "e").exists()


def test_fresh_process_output_is_clean(digits_repo: Path, tmp_path: Path) -> None:
    """In a new interpreter (where ORT's tools would configure root logging on import) the
    command prints its summary and nothing else."""
    script = (
        "import sys\n"
        "from onnxforge.cli import cli, main\n"
        "from onnxforge.cli.edge import export_edge\n"
        "if 'export-edge' not in cli.commands:\n"
        "    cli.add_command(export_edge)\n"
        "main(sys.argv[1:])\n"
    )
    out = tmp_path / "edge"
    done = subprocess.run(
        [sys.executable, "-c", script, "export-edge", "digits-mlp", "-r", str(digits_repo),
         "--out", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 4 and (out / "digits-mlp.ort").is_file()
