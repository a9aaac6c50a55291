"""Parameters for each layer: read from an ``.npz`` file or initialised from the seed.

Keys are ``<layer name>.<param>``, like a PyTorch ``nn.Sequential`` state dict. Common
names from other frameworks are accepted as aliases (PyTorch ``running_mean``, Keras
``gamma``/``kernel``), so an exported state dict loads without renaming.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnxforge.builder.errors import SpecError
from onnxforge.builder.initializers import dense_weight

# layer type -> the parameters it owns, in file order
PARAMS: Mapping[str, tuple[str, ...]] = {
    "dense": ("weight", "bias"),
    "batchnorm": ("scale", "bias", "mean", "var"),
    "layernorm": ("scale", "bias"),
}
ALIASES: Mapping[str, Mapping[str, str]] = {
    "dense": {"kernel": "weight"},
    "batchnorm": {
        "weight": "scale",
        "gamma": "scale",
        "beta": "bias",
        "running_mean": "mean",
        "running_var": "var",
        "moving_mean": "mean",
        "moving_variance": "var",
    },
    "layernorm": {"weight": "scale", "gamma": "scale", "beta": "bias"},
}
# Bookkeeping entries frameworks save that carry no part of the function.
IGNORED: Mapping[str, frozenset[str]] = {"batchnorm": frozenset({"num_batches_tracked"})}


def load_npz(path: Path, spec_file: str) -> dict[str, np.ndarray]:
    """Every array in ``path``, refusing pickled objects."""
    try:
        exists = path.exists()
    except OSError as error:  # e.g. a name too long for the file system
        raise SpecError(spec_file, "", "weights", f"cannot open {path}: {error.strerror}") from None
    if not exists:
        raise SpecError(spec_file, "", "weights", f"file not found: {path}")
    if not path.is_file():
        raise SpecError(spec_file, "", "weights", f"{path} is not a file")
    # np.load would try anything that is not a zip as a pickle; say what it really is.
    if not zipfile.is_zipfile(path):
        raise SpecError(spec_file, "", "weights", f"{path.name} is not an .npz (zip) archive")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                try:
                    arrays[key] = archive[key]
                except ValueError:
                    raise SpecError(
                        spec_file,
                        "",
                        "weights",
                        f"{path.name}['{key}'] holds Python objects (pickled), which are never "
                        "loaded; save plain numeric arrays",
                    ) from None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SpecError(
            spec_file, "", "weights", f"{path.name} is not a readable .npz archive: {reason}"
        ) from None
    return arrays


def default_params(
    layer_type: str,
    shapes: Mapping[str, tuple[int, ...]],
    init: str,
    seed: int,
    index: int,
    weight_layout: str,
) -> dict[str, np.ndarray]:
    """Parameters of a layer when no weights file is given."""
    if layer_type == "dense":
        fan_in, fan_out = shapes["weight"] if weight_layout == "in_out" else shapes["weight"][::-1]
        weight = dense_weight(init, fan_in, fan_out, seed, index)
        if weight_layout == "out_in":
            weight = np.ascontiguousarray(weight.T)
        params = {"weight": weight}
        if "bias" in shapes:
            params["bias"] = np.zeros(shapes["bias"], np.float32)
        return params
    ones = {"scale", "var"}
    return {
        name: (np.ones if name in ones else np.zeros)(shape, np.float32)
        for name, shape in shapes.items()
    }


class WeightsFile:
    """Hands out a file's arrays layer by layer and remembers which keys were used."""

    def __init__(self, arrays: Mapping[str, np.ndarray], file_name: str, spec_file: str) -> None:
        self.arrays = dict(arrays)
        self.file_name = file_name
        self.spec_file = spec_file
        self.used: set[str] = set()

    def take(
        self,
        layer_label: str,
        layer_name: str,
        layer_type: str,
        shapes: Mapping[str, tuple[int, ...]],
        layout_note: str,
    ) -> dict[str, np.ndarray]:
        """The parameters of one layer, checked for presence, dtype, shape and finiteness."""
        found = self._keys_of(layer_label, layer_name, layer_type)
        for param, key in found.items():
            if param not in shapes:
                raise SpecError(
                    self.spec_file,
                    layer_label,
                    param,
                    f"{self.file_name} holds '{key}', but the layer is declared without {param} "
                    "(use_bias: false or affine: false)",
                )
        params = {}
        for param, shape in shapes.items():
            if param not in found:
                present = ", ".join(sorted(self.arrays)) or "nothing"
                raise SpecError(
                    self.spec_file,
                    layer_label,
                    param,
                    f"missing key '{layer_name}.{param}' in {self.file_name} (it holds: {present})",
                )
            key = found[param]
            params[param] = self._checked(key, layer_label, param, shape, layout_note)
        return params

    def _keys_of(self, layer_label: str, layer_name: str, layer_type: str) -> dict[str, str]:
        aliases = ALIASES.get(layer_type, {})
        ignored = IGNORED.get(layer_type, frozenset())
        owned = PARAMS.get(layer_type, ())
        found: dict[str, str] = {}
        prefix = f"{layer_name}."
        for key in sorted(self.arrays):
            if not key.startswith(prefix):
                continue
            suffix = key[len(prefix) :]
            self.used.add(key)
            if suffix in ignored:
                continue
            param = aliases.get(suffix, suffix)
            if param not in owned:
                what = f"parameters: {', '.join(owned)}" if owned else "no parameters"
                raise SpecError(
                    self.spec_file,
                    layer_label,
                    suffix,
                    f"key '{key}' in {self.file_name} is not a parameter of {_article(layer_type)} "
                    f"{layer_type} layer ({what})",
                )
            if param in found:
                raise SpecError(
                    self.spec_file,
                    layer_label,
                    param,
                    f"{self.file_name} holds both '{found[param]}' and '{key}' for {param}",
                )
            found[param] = key
        return found

    def _checked(
        self, key: str, layer_label: str, param: str, shape: tuple[int, ...], layout_note: str
    ) -> np.ndarray:
        array = self.arrays[key]
        where = f"{self.file_name}['{key}']"
        if not np.issubdtype(array.dtype, np.floating):
            raise SpecError(
                self.spec_file,
                layer_label,
                param,
                f"{where} has dtype {array.dtype}; expected floating point",
            )
        if tuple(array.shape) != shape:
            raise SpecError(
                self.spec_file,
                layer_label,
                param,
                f"{where} has shape {tuple(array.shape)}; expected {shape}{layout_note}",
            )
        with np.errstate(over="ignore"):
            array = np.ascontiguousarray(array, dtype=np.float32)
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise SpecError(
                self.spec_file,
                layer_label,
                param,
                f"{where} has {int(bad.sum())} non-finite value(s) (NaN/Inf, or beyond float32), "
                f"first at index {first}",
            )
        if param == "var" and (array < 0).any():
            raise SpecError(self.spec_file, layer_label, param, f"{where} has negative variances")
        return array

    def unused(self) -> list[str]:
        return sorted(set(self.arrays) - self.used)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
