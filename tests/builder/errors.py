"""Assertions on how the command line reports a user's mistake: one line, exit 2, no trace."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CliResult

PREFIX = "onnxforge: error: "


def assert_one_line_error(
    result: CliResult,
    spec: Path | str,
    where: str = "",
    field: str = "",
    reason: tuple[str, ...] = (),
    absent: tuple[str, ...] = (),
) -> str:
    """Exit 2, one line ``onnxforge: error: FILE: WHERE: FIELD...``, no traceback."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    assert "Traceback" not in result.out
    assert result.out == ""
    lines = result.err.rstrip("\n").split("\n")
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith(PREFIX), line
    head = ": ".join(part for part in (str(spec), where, field) if part)
    assert line.startswith(PREFIX + head), f"expected to start with {PREFIX + head!r}: {line!r}"
    if field:
        # The field ends there: ``units: ...`` or ``std[2]: ...``, not ``std.constrained-float``.
        assert line[len(PREFIX + head)] in ":[", f"field {field!r} is not the whole field: {line!r}"
    for fragment in reason:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    for fragment in absent:
        assert fragment not in line, f"{fragment!r} should not be in {line!r}"
    return line


def assert_nothing_written(repository: Path) -> None:
    if repository.exists():
        assert [path for path in repository.rglob("*") if path.is_file()] == []
