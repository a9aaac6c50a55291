"""Quantized variants, made with ONNX Runtime's own tools.

* ``fp16``: weights and compute in half precision; inputs and outputs stay float32 so that
  clients do not change (``onnxruntime.transformers.float16``).
* ``int8-dynamic``: int8 weights, activations quantized to uint8 at run time per batch
  (``quantize_dynamic``: DynamicQuantizeLinear + MatMulInteger).
* ``int8-static``: QDQ format with activation scales calibrated on data (``quantize_static``).

Only ``MatMul`` (and ``Gemm``, common in files from other exporters) is quantized: they hold
nearly all the compute and all the weights. Their outputs are not given a QDQ pair of their
own (``OpTypesToExcludeOutputQuantization``): the file quantizes only what a MatMul reads.
At load time ONNX Runtime fuses what it can (``DynamicQuantizeMatMul`` for int8-dynamic;
``QGemm`` with bias and Relu absorbed for int8-static hidden layers) -- see
``benchmarks/README.md`` for what runs on this CPU and how fast.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from onnxforge.builder.layout import QUANTIZED_VARIANTS

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize; every field is recorded in the written file."""

    method: str = "minmax"  # int8-static calibration: minmax | entropy | percentile
    per_channel: bool = False  # one weight scale per output unit instead of per tensor
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI that saturate u8*s8 sums

    def describe(self, variant: str) -> dict[str, object]:
        settings: dict[str, object] = {"variant": variant}
        if variant.startswith("int8"):
            settings.update(per_channel=self.per_channel, reduce_range=self.reduce_range)
        if variant == "int8-static":
            settings["method"] = self.method
        return settings


class _Batches(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime: no types
    """Feeds calibration rows to ONNX Runtime's calibrator in fixed-size batches."""

    def __init__(self, input_name: str, rows: np.ndarray) -> None:
        # Equal batches: ORT's histogram calibrators (entropy, percentile) stack the batches
        # into one array and fail on a shorter last batch.
        size = max(d for d in range(1, CALIBRATION_BATCH + 1) if len(rows) % d == 0)
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            {input_name: rows[start : start + size]} for start in range(0, len(rows), size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(
    model: onnx.ModelProto,
    variant: str,
    calibration: np.ndarray | None = None,
    options: QuantizeOptions | None = None,
) -> onnx.ModelProto:
    """The ``variant`` of an fp32 model. ``calibration`` rows are needed for int8-static."""
    options = options or QuantizeOptions()
    if variant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        converted: onnx.ModelProto = convert_float_to_float16(
            copy.deepcopy(model), keep_io_types=True
        )
        return converted
    # ORT's quantizers read and write files (and change the model they are given), and log
    # advice through the root logger that does not apply to graphs built here.
    with tempfile.TemporaryDirectory(prefix="onnxforge-quantize-") as folder, _quiet_root_log():
        out = Path(folder) / "quantized.onnx"
        common = {
            "op_types_to_quantize": ["MatMul", "Gemm"],
            "per_channel": options.per_channel,
            "reduce_range": options.reduce_range,
            "weight_type": QuantType.QInt8,
        }
        if variant == "int8-dynamic":
            quantize_dynamic(copy.deepcopy(model), out, **common)
        elif variant == "int8-static":
            if calibration is None or len(calibration) == 0:
                raise ValueError("int8-static needs calibration rows")
            # The calibrators print progress to stdout; keep our own output clean.
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    copy.deepcopy(model),
                    out,
                    _Batches(model.graph.input[0].name, calibration),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    calibrate_method=CALIBRATION_METHODS[options.method],
                    extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
                    **common,
                )
        else:
            known = ", ".join(QUANTIZED_VARIANTS)
            raise ValueError(f"unknown variant {variant!r} (known: {known})")
        quantized = onnx.load(str(out))
    # ORT adds a note of its own; keep only what says where the file came from.
    kept = [prop for prop in quantized.metadata_props if prop.key != "onnx.infer"]
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(kept)
    return quantized


@contextlib.contextmanager
def _quiet_root_log() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
