"""Variant budgets are measured on the user's rows, and the record says which rows those were.

A scikit-learn classifier of 8x8 digit images (pixels scaled to [0, 1]) is the case that
matters: on rows drawn from a standard normal distribution -- nothing like its data -- its
int8-static variant disagrees with fp32 on most rows, on the data itself almost never.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml

from onnxforge.builder import load_spec, metadata, reference, runtime
from onnxforge.builder.accuracy import Figures, figures, shortfalls
from onnxforge.builder.schema import Budget
from tests.helpers import mlp_document

VARIANTS = ("fp16", "int8-dynamic", "int8-static")


@dataclass(frozen=True)
class Digits:
    """A trained digits classifier as a spec folder, with real rows beside it."""

    folder: Path
    spec: Path
    calibration: Path  # rows the classifier was trained on
    validation: Path  # rows it never saw
    predict: Callable[[np.ndarray], np.ndarray]  # scikit-learn's own class predictions


def _document(clf: Any, **overrides: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An MLPClassifier as a spec: coefs_[i] is (inputs, units), the in_out layout."""
    layers, weights = [], {}
    last = len(clf.coefs_) - 1
    for i, (coef, intercept) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        activation = clf.out_activation_ if i == last else clf.activation
        layers.append({"type": "dense", "units": coef.shape[1], "activation": activation})
        weights[f"{i}.weight"], weights[f"{i}.bias"] = coef, intercept
    document = {
        "name": "sklearn-digits",
        "input": {"name": "x", "shape": [64]},  # no distribution: the default stands in
        "output": {"name": "y"},
        "weights": "weights.npz",
        "weight_layout": "in_out",
        "layers": layers,
        "variants": ["fp32", *VARIANTS],
        **overrides,
    }
    return document, weights


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.data))
    x = (data.data[order] / 16.0).astype(np.float32)  # pixels 0..16 scaled to [0, 1]
    labels = data.target[order]
    seen, unseen = x[:1200], x[1200:]
    clf = MLPClassifier(
        hidden_layer_sizes=(128, 64), activation="relu", max_iter=50, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a short run, on purpose
        clf.fit(seen, labels[:1200])
    assert clf.score(unseen, labels[1200:]) > 0.9  # a real classifier, not noise
    folder = tmp_path_factory.mktemp("digits")
    document, weights = _document(clf)
    np.savez(folder / "weights.npz", **weights)
    (folder / "spec.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    np.save(folder / "calib.npy", seen)
    np.save(folder / "valid.npy", unseen)
    return Digits(
        folder,
        folder / "spec.yaml",
        folder / "calib.npy",
        folder / "valid.npy",
        lambda rows: np.asarray(clf.predict(rows)),
    )


def _built(repository: Path, name: str) -> Path:
    return repository / name / "1" / "model.onnx"


def _measure(spec_path: Path, path: Path, rows: np.ndarray) -> Figures:
    """The written file in ONNX Runtime against the NumPy reference, on ``rows``."""
    spec = load_spec(spec_path)
    got = runtime.session(str(path)).run(["y"], {"x": rows})[0]
    return figures(got, reference.run(spec, rows)["y"], classifier=True)


def _assert_recorded(recorded: dict[str, Any], measured: Figures) -> None:
    for key in ("max_abs", "mean_abs", "cosine", "argmax_agreement"):
        assert recorded["outputs"]["y"][key] == pytest.approx(getattr(measured, key)), key


def test_int8_static_is_measured_on_the_calibration_files_kept_back_rows(
    digits: Digits, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    result = run_cli(
        "build", digits.spec, "-r", tmp_path, "--calibration", digits.calibration, "--json"
    )
    assert result.code == 0, result.err
    assert "warning" not in result.err
    reports = {row["variant"]: row for row in json.loads(result.out)}
    assert all(row["status"] != "refused" for row in reports.values())
    rows = np.load(digits.calibration)
    kept = rows[-(len(rows) // 5) :]  # the last 20%, never calibrated on
    expected_rows = {
        "source": f"last {len(kept)} rows of calib.npy, the 20% kept back from calibration",
        "count": len(kept),
        "synthetic": False,
    }
    spec = load_spec(digits.spec)
    # The reference is the classifier: it predicts what scikit-learn predicts on these rows.
    want = reference.run(spec, kept)["y"]
    assert np.mean(want.argmax(axis=1) == digits.predict(kept)) > 0.99
    for variant in VARIANTS:  # every variant is measured on the same rows
        path = _built(tmp_path, f"sklearn-digits-{variant}")
        recorded = json.loads(metadata.props(onnx.load(str(path)))[metadata.ACCURACY])
        # The file records what build reported.
        shared = {key: reports[variant]["accuracy"][key] for key in recorded if key != "reference"}
        assert {key: recorded[key] for key in shared} == shared
        assert recorded["rows"] == expected_rows and recorded["samples"] == len(kept)
        _assert_recorded(recorded, _measure(digits.spec, path, kept))
    static = _built(tmp_path, "sklearn-digits-int8-static")
    agreement = _measure(digits.spec, static, kept).argmax_agreement
    assert agreement is not None and agreement >= 0.95  # inside the default budget
    settings = json.loads(metadata.props(onnx.load(str(static)))[metadata.QUANTIZATION])
    assert settings["calibration"] == f"{len(rows) - len(kept)} rows of calib.npy"
    assert settings["calibration_synthetic"] is False
    assert settings["measured_on"] == expected_rows["source"]
    # Rows that are nothing like the data -- what the budget used to be held on -- would
    # have refused the same file.
    normal = np.random.default_rng(2).standard_normal((512, 64)).astype(np.float32)
    off_data = _measure(digits.spec, static, normal).argmax_agreement
    assert off_data is not None and off_data < 0.95 <= agreement


def test_validation_rows_are_measured_on_in_full(
    digits: Digits, write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # Files named by the spec, relative to it.
    document = yaml.safe_load(digits.spec.read_text())
    document["quantization"] = {"calibration": "calib.npy", "validation": "valid.npy"}
    document["variants"] = ["fp32", "int8-static"]
    document["weights"] = str(digits.folder / "weights.npz")
    spec_path = write_spec(document)
    for source in (digits.calibration, digits.validation):
        (spec_path.parent / source.name).write_bytes(source.read_bytes())
    result = run_cli("build", spec_path, "-r", tmp_path / "repo", "--json")
    assert result.code == 0, result.err
    [report] = [row for row in json.loads(result.out) if row["variant"] == "int8-static"]
    rows, validation = np.load(digits.calibration), np.load(digits.validation)
    kept = rows[-(len(rows) // 5) :]
    measured_on = np.concatenate([kept, validation])
    recorded = report["accuracy"]
    assert recorded["rows"] == {
        "source": f"last {len(kept)} rows of calib.npy, the 20% kept back from calibration"
        f" + all {len(validation)} rows of valid.npy",
        "count": len(kept) + len(validation),
        "synthetic": False,
    }
    path = _built(tmp_path / "repo", "sklearn-digits-int8-static")
    measured = _measure(spec_path, path, measured_on)
    _assert_recorded(recorded, measured)
    assert measured.argmax_agreement is not None and measured.argmax_agreement >= 0.95
    # verify holds the variant to its budget on the same rows, not on drawn ones.
    verified = run_cli("verify", spec_path, "-r", tmp_path / "repo", "--json")
    assert verified.code == 0, verified.out
    [check] = [row for row in json.loads(verified.out) if row["variant"] == "int8-static"]
    assert check["accuracy"]["samples"] == len(measured_on)
    assert check["accuracy"]["outputs"]["y"]["argmax_agreement"] == pytest.approx(
        measured.argmax_agreement
    )
    # inspect shows where the recorded figures come from.
    inspected = run_cli("inspect", path, "--json")
    assert json.loads(inspected.out)["accuracy"]["rows"] == recorded["rows"]
    assert "+ all 597 rows of valid.npy" in " ".join(run_cli("inspect", path).out.split())

    # A flag overrides the spec's file; adding validation rows leaves the calibration alone.
    np.save(tmp_path / "fewer.npy", validation[:100])
    again = run_cli(
        "build", spec_path, "-r", tmp_path / "repo2", "--validation", tmp_path / "fewer.npy"
    )
    assert again.code == 0, again.err
    other = _built(tmp_path / "repo2", "sklearn-digits-int8-static")
    recorded = json.loads(metadata.props(onnx.load(str(other)))[metadata.ACCURACY])
    assert recorded["rows"]["count"] == len(kept) + 100
    assert recorded["rows"]["source"].endswith("+ all 100 rows of fewer.npy")
    _assert_recorded(recorded, _measure(spec_path, other, np.concatenate([kept, validation[:100]])))
    assert onnx.load(str(other)).graph == onnx.load(str(path)).graph


def test_validation_file_alone_is_measured_on_and_static_calibration_is_drawn(
    digits: Digits, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    result = run_cli(
        "build",
        digits.spec,
        "-r",
        tmp_path,
        "--variants",
        "fp32,fp16,int8-static",
        "--validation",
        digits.validation,
        "--json",
    )
    reports = {row["variant"]: row for row in json.loads(result.out)}
    validation = np.load(digits.validation)
    for variant in ("fp16", "int8-static"):
        assert reports[variant]["accuracy"]["rows"] == {
            "source": f"all {len(validation)} rows of valid.npy",
            "count": len(validation),
            "synthetic": False,
        }
    fp16 = _measure(digits.spec, _built(tmp_path, "sklearn-digits-fp16"), validation)
    _assert_recorded(reports["fp16"]["accuracy"], fp16)
    # int8-static still needs calibration rows: drawn from the default distribution, with a
    # warning, since the spec never said what its data looks like.
    [line] = [line for line in result.err.splitlines() if "warning" in line]
    assert line.startswith(f"onnxforge: warning: {digits.spec}: no calibration rows:")
    assert "int8-static is calibrated on synthetic rows" in line and "--calibration" in line
    # Rows of normal(0, 1) cover the pixels' range [0, 1]: the scales fit and it is written,
    # measured on the validation file like fp16.
    assert result.code == 0 and reports["int8-static"]["status"] != "refused", result.err
    path = _built(tmp_path, "sklearn-digits-int8-static")
    _assert_recorded(reports["int8-static"]["accuracy"], _measure(digits.spec, path, validation))
    settings = json.loads(metadata.props(onnx.load(str(path)))[metadata.QUANTIZATION])
    assert settings["calibration_synthetic"] is True
    assert settings["calibration"] == (
        "512 synthetic rows drawn with seed 1 from input.distribution's default"
        " normal(mean=0, std=1), which the spec does not declare"
    )


def test_without_rows_or_a_declared_distribution_the_report_says_synthetic_and_warns(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = write_spec(mlp_document(variants=["fp32", "int8-dynamic"]))
    result = run_cli("build", spec_path, "-r", tmp_path / "repo", "--json")
    assert result.code == 0, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"onnxforge: warning: {spec_path}: no calibration or validation")
    assert "input.distribution" in lines[0] and "--validation" in lines[0]
    [report] = [row for row in json.loads(result.out) if row["variant"] == "int8-dynamic"]
    assert report["accuracy"]["rows"] == {
        "source": "synthetic rows drawn with seed 2 from input.distribution's default"
        " normal(mean=0, std=1), which the spec does not declare",
        "count": 512,
        "synthetic": True,
    }
    # The figures are those of 512 standard normal rows drawn with seed 2.
    rows = np.random.default_rng(2).normal(0.0, 1.0, size=(512, 4)).astype(np.float32)
    path = _built(tmp_path / "repo", "tiny-int8-dynamic")
    got = runtime.session(str(path)).run(["y"], {"x": rows})[0]
    want = reference.run(load_spec(spec_path), rows)["y"]
    assert report["accuracy"]["outputs"]["y"]["max_abs"] == pytest.approx(
        float(np.abs(got.astype(np.float64) - want).max())
    )
    # The table says so too; --quiet silences the warning.
    table = run_cli("-q", "build", spec_path, "-r", tmp_path / "repo")
    assert table.code == 0 and table.err == ""
    shown = run_cli("build", spec_path, "-r", tmp_path / "repo")
    assert "tiny: 512 rows: synthetic rows drawn with seed 2" in shown.out

    # A declared distribution is what the author says the data looks like: no warning.
    declared = mlp_document(
        name="declared",
        input={"name": "x", "shape": [4], "distribution": {"uniform": {"low": -1, "high": 1}}},
        variants=["fp32", "int8-dynamic"],
    )
    result = run_cli("build", write_spec(declared), "-r", tmp_path / "repo", "--json")
    assert result.code == 0 and result.err == ""
    [report] = [row for row in json.loads(result.out) if row["variant"] == "int8-dynamic"]
    rows_used = report["accuracy"]["rows"]
    assert rows_used["synthetic"] is True
    assert rows_used["source"].endswith("seed 2 from input.distribution uniform(low=-1, high=1)")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: np.save(p, np.zeros((10, 5), np.float32)), "does not fit"),
        (lambda p: np.save(p, np.full((10, 4), np.nan, np.float32)), "NaN or Inf"),
        (lambda p: None, "file not found"),
    ],
    ids=["shape", "nan", "missing"],
)
@pytest.mark.parametrize("command", ["build", "quantize"])
def test_bad_validation_file_is_one_line_and_writes_nothing(
    make: Callable[[Path], None],
    fragment: str,
    command: str,
    write_spec: Callable[..., Path],
    run_cli: Callable[..., Any],
    tmp_path: Path,
) -> None:
    validation = tmp_path / "valid.npy"
    make(validation)
    spec_path = write_spec(mlp_document(variants=["fp32", "int8-dynamic"]))
    if command == "build":
        args: list[Any] = ["build", spec_path, "-r", tmp_path / "repo"]
    else:
        assert run_cli("build", spec_path, "-r", tmp_path / "fp32").code == 0
        source = _built(tmp_path / "fp32", "tiny")
        args = ["quantize", source, "--variant", "int8-dynamic", "-o", tmp_path / "repo" / "q"]
    result = run_cli(*args, "--validation", validation)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err
    assert lines[0].startswith(f"onnxforge: error: {validation}: ") and fragment in lines[0]
    assert not (tmp_path / "repo").exists()


def test_quantize_measures_on_the_users_rows(
    digits: Digits, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    assert run_cli("build", digits.spec, "-r", tmp_path, "--variants", "fp32").code == 0
    source, out = _built(tmp_path, "sklearn-digits"), tmp_path / "q.onnx"
    rows, validation = np.load(digits.calibration), np.load(digits.validation)
    kept = rows[-(len(rows) // 5) :]
    result = run_cli(
        "quantize",
        source,
        "--variant",
        "int8-static",
        "-o",
        out,
        "--calibration",
        digits.calibration,
        "--validation",
        digits.validation,
        "--json",
    )
    assert result.code == 0, result.err
    assert result.err == ""  # real rows: nothing to warn about
    report = json.loads(result.out)
    assert report["rows"] == {
        "source": f"last {len(kept)} rows of calib.npy, the 20% kept back from calibration"
        f" + all {len(validation)} rows of valid.npy",
        "count": len(kept) + len(validation),
        "synthetic": False,
    }
    # Against the fp32 file, as quantize measures, on exactly those rows.
    measured_on = np.concatenate([kept, validation])
    want = runtime.session(str(source)).run(["y"], {"x": measured_on})[0]
    got = runtime.session(str(out)).run(["y"], {"x": measured_on})[0]
    _assert_recorded(report, figures(got, want, classifier=True))
    assert report["outputs"]["y"]["argmax_agreement"] >= 0.95
    # fp16 calibrates on nothing and is measured on the same rows.
    fp16 = run_cli(
        "quantize",
        source,
        "--variant",
        "fp16",
        "-o",
        tmp_path / "h.onnx",
        "--calibration",
        digits.calibration,
        "--validation",
        digits.validation,
        "--json",
    )
    assert json.loads(fp16.out)["rows"] == report["rows"]
    # Without rows: standard normal rows, said in the report and in one warning line.
    bare = run_cli("quantize", source, "--variant", "int8-dynamic", "-o", tmp_path / "d.onnx")
    assert bare.code == 0, bare.err
    [line] = bare.err.strip().splitlines()
    assert line.startswith(f"onnxforge: warning: {source}: no calibration or validation rows")
    assert "(synthetic rows drawn with seed 2 from a standard normal distribution)" in bare.out


# --- figures printed with enough digits -------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "limit"),
    [
        ("cosine", 0.99985, 0.9999),
        ("cosine", 0.99995, 0.99996),
        ("cosine", 0.99994999, 0.99995001),
        ("cosine", 1 - 1e-12, 1.0),
        ("argmax_agreement", 0.9499999, 0.95),
        ("argmax_agreement", 0.002, 0.95),
        ("max_abs", 0.050001, 0.05),
        ("max_abs", 1e-7 + 1e-13, 1e-7),
        ("mean_abs", 123456.7, 123456.6),
    ],
)
def test_shortfalls_show_figures_that_differ_and_a_distance_above_zero(
    key: str, value: float, limit: float
) -> None:
    fields = {"max_abs": 0.0, "mean_abs": 0.0, "cosine": 1.0, "argmax_agreement": 1.0}
    [failure] = shortfalls(Figures(**{**fields, key: value}), Budget(**{key: limit}))
    higher = key in ("cosine", "argmax_agreement")
    pattern = rf"{key} (\S+) {'<' if higher else '>'} (\S+) \((?:short|over) by (\S+)\)"
    match = re.fullmatch(pattern, failure)
    assert match is not None, failure
    shown, bound, gap = (float(text) for text in match.groups())
    distance = abs(value - limit)
    # Each figure is printed within half their distance: the two never read the same.
    assert abs(shown - value) <= distance / 2 and abs(bound - limit) <= distance / 2
    assert (shown < bound) if higher else (shown > bound)
    assert gap == pytest.approx(distance, rel=5e-3) and gap > 0


def test_a_budget_missed_by_a_hair_is_reported_with_the_digits_that_show_it(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    document = mlp_document(variants=["int8-dynamic"])
    first = run_cli("build", write_spec(document), "-r", tmp_path / "a", "--json")
    figures_ = json.loads(first.out)[0]["accuracy"]["outputs"]["y"]
    max_abs, cosine = figures_["max_abs"], figures_["cosine"]
    assert max_abs > 0 and cosine < 1  # int8 costs something
    # Budgets a hair tighter than what the same build measures.
    budget = {"max_abs": max_abs * (1 - 1e-6), "cosine": cosine + (1 - cosine) * 1e-3}
    document["budget"] = {"int8-dynamic": budget}
    result = run_cli("build", write_spec(document), "-r", tmp_path / "b")
    assert result.code == 1
    line = result.err.strip().splitlines()[-1]
    over = re.search(r"max_abs (\S+) > (\S+) \(over by (\S+)\)", line)
    short = re.search(r"cosine (\S+) < (\S+) \(short by (\S+)\)", line)
    assert over is not None and short is not None, line
    assert float(over[1]) > float(over[2]) and float(over[3]) > 0
    assert float(over[1]) == pytest.approx(max_abs, rel=1e-6)
    assert float(short[1]) < float(short[2]) and float(short[3]) > 0
    assert float(short[1]) == pytest.approx(cosine, abs=(1 - cosine) * 1e-3)
