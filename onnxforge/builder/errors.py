"""The errors onnxforge's builder raises at its boundary.

    OnnxforgeError          base; ``str(error)`` is one line fit for a terminal
    ├── SpecError           a spec, weights or calibration file is wrong (file, layer, field)
    ├── ArtifactError       a built file is missing, unreadable or not what we expect
    └── UnsupportedError    a valid request this version cannot fulfil yet

The command line prints the message on one line and exits with code 2 for all of them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` with control characters (newlines too) shown escaped: messages stay one line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def describe(error: BaseException) -> str:
    """An exception as one line of words (its name when it has no message)."""
    return " ".join(str(error).split()) or type(error).__name__


def did_you_mean(
    word: str, known: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
) -> str:
    """`` (did you mean 'silu'?)`` for a misspelt or foreign name, or ``""``.

    Tried in order: the same name in another case or with '-'/' ' for '_'; another
    library's name for it (``aliases``, keyed by the normalised word); the known names it
    is the first word of (``he`` -> he_normal, he_uniform); then the closest spelling.
    """
    plain = re.sub(r"[-\s]+", "_", word.strip().lower())
    close = [name for name in known if name == plain]
    close = close or list((aliases or {}).get(plain, ()))
    close = close or [name for name in known if plain and name.startswith(plain + "_")]
    close = close or difflib.get_close_matches(plain, known, n=1)
    if not close or close == [word]:
        return ""
    return f" (did you mean {' or '.join(repr(name) for name in close)}?)"


class OnnxforgeError(Exception):
    """Base class: the message is one line, names the file and what is wrong."""


class SpecError(OnnxforgeError):
    """A spec (or a file it points to) is invalid.

    ``where`` is the layer (``layers[2] (dense "hidden")``) or the top-level section, and
    ``field`` the offending key; either may be empty.
    """

    def __init__(self, file: str, where: str, field: str, reason: str) -> None:
        self.file = file
        self.where = where
        self.field = field
        self.reason = reason
        parts = [part for part in (file, where, field) if part]
        super().__init__(one_line(": ".join([*parts, reason])))


class ArtifactError(OnnxforgeError):
    """A model file in the repository is missing, unreadable or stale."""


class UnsupportedError(OnnxforgeError):
    """A well-formed request that this version of onnxforge does not support."""
