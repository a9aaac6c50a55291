"""``onnxforge tune``: a real search with a tiny budget on a small model.

Figures are checked for being measured and consistent (every request answered, the chosen
setting the one the stated objective picks out of the JSON), never against thresholds.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from onnxforge.builder import load_spec
from onnxforge.builder.triton import read_config
from tests.conftest import CliResult
from tests.helpers import mlp_document

RunCli = Callable[..., CliResult]
# Three settings at most (two of server flags, one of batching), two concurrency levels.
SMALL = ("--budget", "20", "--max-points", "3", "--concurrency", "1,4")
COMMENT = "# a small model to tune"


@pytest.fixture
def repository(tmp_path: Path, run_cli: RunCli) -> Path:
    """A repository with model 'tiny' built from a spec that carries comments."""
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    document = mlp_document(serving={"max_batch_size": 16, "keep_versions": 3})
    text = yaml.safe_dump(document, sort_keys=False)
    text = text.replace("  keep_versions: 3\n", "  keep_versions: 3  # older files kept\n")
    (folder / "spec.yaml").write_text(f"{COMMENT}\n{text}")
    built = run_cli("build", "-r", tmp_path / "models")
    assert built.code == 0, built.err
    return tmp_path / "models"


def _chosen_by_objective(report: dict[str, Any]) -> list[int]:
    """The indexes the objective allows as best, worked out from the JSON alone."""
    low, high = min(report["concurrencies"]), max(report["concurrencies"])

    def at(point: dict[str, Any], clients: int) -> dict[str, Any]:
        return next(level for level in point["levels"] if level["concurrency"] == clients)

    valid = [
        point
        for point in report["points"]
        if all(set(level["statuses"]) == {"OK"} for level in point["levels"])
    ]
    limit = 2 * min(at(point, low)["p99_ms"] for point in valid)
    assert report["objective"]["p99_limit_ms"] == pytest.approx(limit)
    eligible = [point for point in valid if at(point, low)["p99_ms"] <= limit]
    assert {point["index"] for point in eligible} == {
        point["index"] for point in report["points"] if point["eligible"]
    }
    best = max(at(point, high)["rows_per_second"] for point in eligible)
    return [point["index"] for point in eligible if at(point, high)["rows_per_second"] == best]


def _check_points(report: dict[str, Any]) -> None:
    assert 1 <= len(report["points"]) <= 3
    for point in report["points"]:
        assert [level["concurrency"] for level in point["levels"]] == [1, 4]
        for level in point["levels"]:
            assert level["requests"] > 0 and level["statuses"] == {"OK": level["requests"]}
            assert level["throughput_rps"] > 0
            assert level["rows_per_second"] == pytest.approx(level["throughput_rps"])
            assert 0 < level["p50_ms"] <= level["p99_ms"]
            assert level["server_cpu_ms_per_request"] >= 0
    assert report["chosen"] in _chosen_by_objective(report)


def test_tune_measures_settings_and_writes_the_best_into_the_spec(
    repository: Path, run_cli: RunCli
) -> None:
    spec_path = repository / "tiny" / "spec.yaml"
    before = load_spec(spec_path)
    result = run_cli("tune", "tiny", "-r", repository, *SMALL, "--json", "--write")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    _check_points(report)
    assert len(report["points"]) >= 2  # the budget holds more than one setting
    assert {point["stage"] for point in report["points"]} <= {"flags", "batching"}
    assert report["points"][0]["stage"] == "flags"
    assert report["model_serving"] == {
        "max_batch_size": 16,
        "max_queue_delay_us": 500,
        "instances": 1,
    }
    chosen = report["points"][report["chosen"]]
    assert report["serving"] == {
        key: chosen[key] for key in ("max_batch_size", "max_queue_delay_us", "instances")
    }
    flags = report["server_flags"]
    assert report["serve_command"].startswith(f"onnxforge serve {repository} --threads ")
    assert f"--workers {flags['workers']}" in report["serve_command"]

    after = load_spec(spec_path)
    serving = after.document.serving
    assert (serving.max_batch_size, serving.max_queue_delay_us, serving.instances) == tuple(
        report["serving"].values()
    )
    assert serving.keep_versions == 3  # the rest of the mapping is kept
    assert after.sha256 == before.sha256  # layers and weights untouched
    assert after.document.layers == before.document.layers
    text = spec_path.read_text()
    assert text.startswith(COMMENT) and "# older files kept" in text
    assert report["written"]["comments_lost"] is False
    config = read_config(repository / "tiny" / "config.pbtxt")  # rewritten from the spec
    assert (config.max_batch_size, config.max_queue_delay_us, config.instances) == tuple(
        report["serving"].values()
    )


def test_a_model_without_a_spec_gets_its_config_rewritten(
    repository: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(repository / "tiny", bare / "tiny", ignore=shutil.ignore_patterns("*.yaml"))
    picture = tmp_path / "tune.png"
    result = run_cli("tune", "tiny", "-r", bare, *SMALL, "--write", "--plot", picture)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in lines
        if line.startswith("│") and line.split("│")[1].strip()
    ]
    marked = [row for row in rows if row[0].endswith("*")]
    assert 1 <= len(rows) <= 3 and len(marked) == 1  # one row per setting, one marked best
    assert all(row[0].rstrip("*!").isdigit() for row in rows)
    best = marked[0]
    assert any(line.startswith(f"best: #{best[0].rstrip('*')} ") for line in lines)
    assert any(line.startswith(f"serve with: onnxforge serve {bare} ") for line in lines)
    transport, batch, delay, instances = best[4], best[5], best[6], best[7]
    assert transport in ("loop", "64 thr")
    config = read_config(bare / "tiny" / "config.pbtxt")
    assert config.max_batch_size == (0 if batch == "off" else int(batch))
    assert config.max_queue_delay_us == (0 if delay == "-" else int(delay))
    assert config.instances == int(instances)
    assert f"wrote {{'max_batch_size': {config.max_batch_size}" in result.out
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nothing", "--budget", "30"), "no built model 'nothing'"),
        (("tiny", "--budget", "1"), "--budget 1 s is too small for one point"),
        (("tiny", "--concurrency", "0"), "--concurrency"),
    ],
)
def test_bad_input_ends_with_one_line(
    repository: Path, run_cli: RunCli, args: tuple[str, ...], message: str
) -> None:
    result = run_cli("tune", *args, "-r", repository)
    assert result.code == 2
    assert result.out == "" and len(result.err.strip().splitlines()) == 1
    assert message in result.err


def test_plot_without_matplotlib_fails_before_measuring(
    repository: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    result = run_cli("tune", "tiny", "-r", repository, "--plot", tmp_path / "tune.png")
    assert result.code == 2 and result.out == ""
    assert result.err.strip().splitlines() == [
        "onnxforge: error: --plot needs matplotlib: pip install -e '.[bench]' "
        "(or pip install matplotlib)"
    ]
    assert not (tmp_path / "tune.png").exists()


def test_the_yaml_edit_keeps_comments_and_other_keys() -> None:
    from onnxforge.bench.tune_write import edit_yaml_serving

    values = {"max_batch_size": 8, "max_queue_delay_us": 100, "instances": 2}
    text = (
        "name: a  # the name\nserving:\n    max_batch_size: 64  # big\n    keep_versions: 3\n"
        "layers: []\n"
    )
    edited = edit_yaml_serving(text, values)
    assert edited is not None
    assert "name: a  # the name\n" in edited and "max_batch_size: 8  # big\n" in edited
    assert yaml.safe_load(edited) == {
        "name": "a",
        "serving": {**values, "keep_versions": 3},
        "layers": [],
    }
    assert yaml.safe_load(edit_yaml_serving("name: a\n", values) or "")["serving"] == values
    assert edit_yaml_serving("serving: {max_batch_size: 4}\n", values) is None  # flow style


def test_config_text_reads_back_and_moves_the_batch_dimension(repository: Path) -> None:
    from onnxforge.bench.tune_points import Batching
    from onnxforge.bench.tune_write import config_text
    from onnxforge.builder.triton import parse_pbtxt

    path = repository / "tiny" / "config.pbtxt"
    for batching, dims in ((Batching(0, 0, 2), [-1, 4]), (Batching(32, 200, 1), [4])):
        path.write_text(config_text(path, "tiny", batching))
        config = read_config(path)
        assert (config.max_batch_size, config.max_queue_delay_us, config.instances) == (
            batching.max_batch_size,
            batching.max_queue_delay_us,
            batching.instances,
        )
        fields = parse_pbtxt(path.read_text())
        assert fields["input"][0]["dims"] == dims and fields["name"] == ["tiny"]


def test_the_grid_starts_with_serves_defaults_and_has_no_duplicates() -> None:
    from onnxforge.bench.tune_points import Flags, flag_grid
    from onnxforge.cli.serve import serve

    defaults = {param.name: param.default for param in serve.params}
    first = Flags(defaults["threads"], defaults["spinning"], int(defaults["workers"]))
    for cores in (1, 2, 4):
        grid = flag_grid(cores)
        assert grid[0] == first and len(set(grid)) == len(grid)
        assert grid[1] == Flags(first.threads, first.spinning, 1, 64)  # gRPC on threads
        assert all(flags.workers <= cores for flags in grid)
        assert all(flags.spinning is None for flags in grid if flags.threads == 1)


def test_spinning_reaches_the_session_options(repository: Path) -> None:
    from onnxforge.server.model_version import Serving, open_version

    path = repository / "tiny" / "1" / "model.onnx"
    for spinning, entry in ((False, "0"), (True, "1")):
        version = open_version("tiny", "1", path, Serving(), 2, spinning)
        options = version.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
