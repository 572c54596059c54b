"""Quantization with ONNX Runtime's tools: int8 dynamic and static, fp16 and int4 weights.

Every format is optimized as ONNX (PyTorch formats are exported first, see
export.py): ONNX Runtime's int8 kernels (VNNI/AVX2 on x86, dot-product on
ARM) give real CPU speedups, while torch's own CPU int8 path needs eager
modules that TorchScript and torch.export programs no longer have.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from ..datasets import EvalData
from ..errors import TechniqueFailed
from . import OP_TYPES

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
    src: Path, dst: Path, params: dict, data: EvalData | None, batch: int, check: Callable[[], None]
) -> dict:
    mode = params["mode"]
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        source = _preprocessed(src, Path(tmp))
        if mode == "int8_dynamic":
            _dynamic(source, dst, params)
        elif mode == "int8_static":
            if data is None or data.source != "dataset":
                raise TechniqueFailed(
                    "int8 static quantization calibrates on evaluation data; "
                    "attach an .npz to the model first."
                )
            _static(source, dst, params, opset_for_static(source, Path(tmp)), data, batch, check)
        elif mode == "fp16":
            from onnxconverter_common import float16

            model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
            onnx.save(model, str(dst))
        elif mode == "int4_weights":
            _int4(source, dst)
        else:
            raise TechniqueFailed(f"Unknown quantization mode {mode!r}.")
    return {"mode": mode}


def _op_types(params: dict) -> list[str] | None:
    _, ops = OP_TYPES[params.get("op_types", "all")]
    return list(ops) if ops else None


def _dynamic(source: Path, dst: Path, params: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=_op_types(params),
        nodes_to_exclude=params.get("exclude_nodes") or None,
    )


def _static(source, dst, params, source_opset, data, batch, check) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source_opset),
        str(dst),
        _CalibrationReader(data, batch, check),
        quant_format=QuantFormat.QOperator if params.get("format") == "qoperator" else QuantFormat.QDQ,
        op_types_to_quantize=_op_types(params),
        nodes_to_exclude=params.get("exclude_nodes") or None,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[params.get("calibration", "minmax")],
        extra_options={
            # skl2onnx's 2-D biases crash ORT's int32 bias adjustment.
            "QDQDisableWeightAdjustForInt32Bias": True,
            # Entropy and percentile keep a histogram per tensor; fewer bins bound the memory.
            "CalibNumBins": 512,
        },
    )


def opset_for_static(source: Path, workdir: Path) -> Path:
    """Per-channel QDQ needs opset 13 (axis on QuantizeLinear); older models are converted
    first, or quantization writes a graph ONNX Runtime refuses."""
    model = onnx.load(str(source))
    default = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if default >= 13:
        return source
    from onnx import version_converter

    try:
        upgraded = version_converter.convert_version(model, 13)
    except Exception as exc:
        raise TechniqueFailed(
            f"The model uses ONNX opset {default}; int8 static needs 13 and the conversion failed."
        ) from exc
    target = workdir / "opset13.onnx"
    onnx.save(upgraded, str(target))
    return target


def _int4(source: Path, dst: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(source))
    if not any(node.op_type == "MatMul" for node in model.graph.node):
        raise TechniqueFailed("int4 weights quantize MatMul layers, and this model has none.")
    quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=True)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


SENSITIVITY_SAMPLES = 64


def sensitive_nodes(
    src: Path, data: EvalData, batch: int, workdir: Path, check: Callable[[], None]
) -> list[str]:
    """The Conv, MatMul and Gemm nodes int8 static (QDQ, min-max) hurts most, worst first.

    Both models run on a sample with every intermediate tensor kept (ORT's qdq_loss_debug);
    each tensor's signal-to-noise ratio against the float model's tells how far int8 has
    drifted by then, and a node's sensitivity is how much of that ratio it loses between
    its input and its output.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        source = opset_for_static(_preprocessed(src, folder), folder)
        sample = data.head(SENSITIVITY_SAMPLES)
        qdq = folder / "qdq.onnx"
        quantize_static(
            str(source),
            str(qdq),
            _CalibrationReader(sample, batch, check),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"QDQDisableWeightAdjustForInt32Bias": True},
        )
        check()
        found = {}
        for name, model in (("qdq", qdq), ("float", source)):
            augmented = folder / f"{name}_outputs.onnx"
            modify_model_output_intermediate_tensors(str(model), str(augmented))
            found[name] = collect_activations(str(augmented), _CalibrationReader(sample, batch, check))
            check()
        matches = create_activation_matching(found["qdq"], found["float"])
        ratio = {
            tensor: compute_signal_to_quantization_noice_ratio(match["float"], match["post_qdq"])
            for tensor, match in matches.items()
            if match.get("float") is not None
        }
        nodes = onnx.load(str(source)).graph.node
    lost = []
    for node in nodes:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or not node.name or node.output[0] not in ratio:
            continue
        before = ratio.get(node.input[0], math.inf)  # a graph input is exact: no noise yet
        drop = min(before, 1e6) - ratio[node.output[0]]
        if math.isfinite(drop):
            lost.append((-drop, node.name))
    return [name for _, name in sorted(lost)]


class _CalibrationReader:
    """Feeds calibration batches to quantize_static, checking for a cancel between batches."""

    def __init__(self, data: EvalData, batch: int, check: Callable[[], None]):
        count = min(data.count, CALIBRATION_SAMPLES)
        starts = range(0, max(count - batch, 0) + 1, batch)
        self._feeds = iter([data.take(start, start + batch) for start in starts])
        self._check = check

    def get_next(self):
        self._check()
        return next(self._feeds, None)

    def __iter__(self):  # qdq_loss_debug iterates where quantize_static calls get_next
        return iter(self.get_next, None)
