"""Quantization with ONNX Runtime's tools: int8 dynamic, int8 static, fp16 weights.

Every format is optimized as ONNX (PyTorch formats are exported first, see
export.py): ONNX Runtime's int8 kernels (VNNI/AVX2 on x86, dot-product on
ARM) give real CPU speedups, while torch's own CPU int8 path needs eager
modules that TorchScript and torch.export programs no longer have.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ..datasets import EvalData
from ..errors import TechniqueFailed

CALIBRATION_SAMPLES = 256


def _preprocessed(src: Path, workdir: Path) -> Path:
    """Shape inference and graph fusions ORT recommends before quantizing.

    Symbolic shape inference is skipped: it serves transformer-style dynamic
    shapes, and its sympy import and pass cost over a second on every session.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = workdir / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(target), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimization; quantize the original instead
        logging.getLogger(__name__).info("quantization pre-processing skipped", exc_info=True)
        return src
    return target


def quantize(
    src: Path, dst: Path, mode: str, data: EvalData | None, batch: int, check: Callable[[], None]
) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        source = _preprocessed(src, Path(tmp))
        if mode == "int8_dynamic":
            quantize_dynamic(str(source), str(dst), weight_type=QuantType.QInt8)
        elif mode == "int8_static":
            if data is None or data.source != "dataset":
                raise TechniqueFailed(
                    "int8 static quantization calibrates on evaluation data; "
                    "attach an .npz to the model first."
                )
            quantize_static(
                str(source),
                str(dst),
                _CalibrationReader(data, batch, check),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        elif mode == "fp16":
            from onnxconverter_common import float16

            model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
            onnx.save(model, str(dst))
        else:
            raise TechniqueFailed(f"Unknown quantization mode {mode!r}.")
    return {"mode": mode}


class _CalibrationReader:
    """Feeds calibration batches to quantize_static (which only calls get_next),
    checking for a cancel between batches."""

    def __init__(self, data: EvalData, batch: int, check: Callable[[], None]):
        count = min(data.count, CALIBRATION_SAMPLES)
        starts = range(0, max(count - batch, 0) + 1, batch)
        self._feeds = iter(
            [
                {
                    name: np.ascontiguousarray(array[start : start + batch])
                    for name, array in data.inputs.items()
                }
                for start in starts
            ]
        )
        self._check = check

    def get_next(self):
        self._check()
        return next(self._feeds, None)
