"""Quantization with ONNX Runtime's tools: int8 dynamic and static, fp16 and int4 weights.

Every format is optimized as ONNX (PyTorch formats are exported first, see
export.py): ONNX Runtime's int8 kernels (VNNI/AVX2 on x86, dot-product on
ARM) give real CPU speedups, while torch's own CPU int8 path needs eager
modules that TorchScript and torch.export programs no longer have.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from ..datasets import EvalData
from ..errors import TechniqueFailed
from . import OP_TYPES, onnx_graph

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
    details: dict = {"mode": mode}
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
            details |= _static(source, dst, params, opset_for_static(source, Path(tmp)), data, batch, check)
        elif mode == "fp16":
            # ONNX Runtime's own converter: onnxconverter-common's left YOLOv8's Cast nodes
            # casting to float32 where their outputs became float16, which ORT refuses to load.
            # Its graph is put in order below, with every quantized one.
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
            onnx.save(model, str(dst))
        elif mode == "int4_weights":
            _int4(source, dst)
        else:
            raise TechniqueFailed(f"Unknown quantization mode {mode!r}.")
    quantized = onnx.load(str(dst), load_external_data=False)
    if onnx_graph.sort_topologically(quantized):
        onnx.save(quantized, str(dst))
    return details


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


def _static(source, dst, params, source_opset, data, batch, check) -> dict:
    """Quantize, and say how many samples calibrated it."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = _CalibrationReader(data, batch, check)
    quantize_static(
        str(source_opset),
        str(dst),
        reader,
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
    found = {"calibration_samples": min(reader.samples, data.count)}
    if reader.cut_short:
        found["calibration_note"] = "stopped early: the calibration's tensors filled its share of memory"
    return found


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


def quantized_nodes(src: Path, workdir: Path, params: dict) -> list[str]:
    """The names of the nodes int8 static with `params` quantizes, in graph order, as its
    quantizer sees them (after the same pre-processing): what the fallback may leave in
    float through `exclude_nodes`."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        source = opset_for_static(_preprocessed(src, folder), folder)
        nodes = onnx.load(str(source), load_external_data=False).graph.node
    # Without a list, quantize_static takes both registries' operators, in either format.
    wanted = _op_types(params) or {*QLinearOpsRegistry, *QDQRegistry}
    return [node.name for node in nodes if node.op_type in wanted and node.name]


def _memory() -> tuple[int, int] | None:
    """This process's address space and resident memory in bytes (Linux), or None."""
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        size, resident = Path("/proc/self/statm").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return int(size) * page, int(resident) * page


def _available_memory(resident: int) -> int:
    """What the machine can still give this process: the kernel's MemAvailable, which counts
    what other processes hold (a worker beside a busy web server, tests, a second worker),
    else physical memory less this process's own."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") - resident, 0)


def memory_guard() -> Callable[[], bool] | None:
    """A check that says when the process has used half the memory it had left now,
    or None where memory cannot be read.

    ORT's calibrators keep every batch's intermediate tensors until the end (23.6 GB for
    256 samples of the PP-OCRv4 recognizer), and its own bound, CalibMaxIntermediateOutputs,
    drops the batches it clears in onnxruntime 1.32 instead of merging their ranges. So
    calibration stops taking batches at that mark: the address space against its limit (the
    sandbox's memory cap) or, without a limit, resident memory against what the machine has
    available (two benchmark runs beside a test suite were killed at 24 GB when it was
    measured against the machine's total).
    """
    import resource

    now = _memory()
    if now is None:
        return None
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        which, left = 1, _available_memory(now[1])
    else:
        which, left = 0, max(limit - now[0], 0)
    mark = now[which] + left // 2

    def exhausted() -> bool:
        reading = _memory()
        return reading is not None and reading[which] > mark

    return exhausted


class _CalibrationReader:
    """Feeds calibration batches to quantize_static, checking for a cancel between batches
    and stopping early (after one batch at least) once half the memory left at its start is
    used (memory_guard)."""

    def __init__(self, data: EvalData, batch: int, check: Callable[[], None]):
        count = min(data.count, CALIBRATION_SAMPLES)
        starts = range(0, max(count - batch, 0) + 1, batch)
        self._feeds = iter([data.take(start, start + batch) for start in starts])
        self._check = check
        self._exhausted = memory_guard()
        self._batch = batch
        self.samples = 0
        self.cut_short = False

    def get_next(self):
        self._check()
        if self.samples and self._exhausted is not None and self._exhausted():
            self.cut_short = True
            return None
        feeds = next(self._feeds, None)
        if feeds is not None:
            self.samples += self._batch
        return feeds
