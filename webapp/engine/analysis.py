"""Inspect an uploaded model: format, inputs, parameters, layer types, baseline latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import datasets, formats, loading, screening
from .datasets import generate
from .errors import DatasetRejected, ModelRejected
from .evaluation import class_scores, first_batch
from .loading import InputSpec
from .timing import BUDGET_S, latency

DEFAULT_INPUT_NAME = "input"


def _given_specs(input_shape) -> list[InputSpec] | None:
    """input_shape as sent by the user: [1, 64] for one input, or {name: shape}."""
    if input_shape is None:
        return None
    named = input_shape if isinstance(input_shape, dict) else {DEFAULT_INPUT_NAME: input_shape}
    specs = []
    for name, shape in named.items():
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise ModelRejected(
                f"input_shape for {name!r} must be a list of positive whole "
                f"numbers such as [1, 64], got {shape!r}."
            )
        # The first dimension counts samples: leave it free so any batch fits.
        specs.append(InputSpec(str(name), [None, *shape[1:]]))
    return specs


def _shape_from_data(inputs: list[InputSpec], shapes: dict[str, tuple]) -> None:
    """Fill the dimensions a model leaves open besides its sample axis (the first open one,
    as datasets.default_axes takes it), an image's height and width say, from its
    evaluation arrays' shapes: by input name, or 'x' for a single input."""
    axes = datasets.default_axes(inputs)
    for spec in inputs:
        found = shapes.get(spec.name) or (shapes.get("x") if len(inputs) == 1 else None)
        if found is None or len(found) != len(spec.shape):
            continue  # load_npz says what is wrong with it
        spec.shape = [
            d if d is not None or i == axes[spec.name] else found[i] for i, d in enumerate(spec.shape)
        ]


def analyse(
    path: Path,
    threads: int,
    input_shape=None,
    eval_path: Path | None = None,
    max_unpacked_bytes: int = datasets.DEFAULT_MAX_BYTES,
    latency_seconds: float = BUDGET_S,
) -> dict:
    model_format = formats.detect_format(path)
    if model_format != formats.ONNX:
        screening.check_zip(path, max_unpacked_bytes)
    specs = _given_specs(input_shape)
    if specs is None and eval_path is not None and model_format == formats.TORCHSCRIPT:
        specs = datasets.input_specs(eval_path, max_unpacked_bytes)
    model = loading.load(path, model_format, threads, specs, max_unpacked_bytes=max_unpacked_bytes)
    if model_format == formats.ONNX and specs:
        # The file's own names win; the user's shape fills dimensions it leaves open.
        for spec, given in zip(model.inputs, specs, strict=False):
            spec.shape = [d if d is not None else g for d, g in zip(spec.shape, given.shape, strict=False)]
    if model_format == formats.ONNX and eval_path is not None:
        _shape_from_data(model.inputs, screening.check_npz(eval_path, datasets.MEMBERS, max_unpacked_bytes))
    data = datasets.load_npz(eval_path, model.inputs, max_unpacked_bytes) if eval_path else None
    axes = data.axes if data else datasets.default_axes(model.inputs)
    if any(d is None and i != axes[s.name] for s in model.inputs for i, d in enumerate(s.shape)):
        raise ModelRejected(
            "The model leaves input dimensions other than the batch open; "
            "send input_shape to fix them, e.g. [1, 3, 224, 224], or evaluation data that shows them."
        )
    eval_summary = None
    if data is not None:
        first = data.take(0, model.inputs[0].fixed_batch or 1)
        outputs = [np.asarray(output) for output in model.run(first)]
        scores = class_scores(outputs)
        if data.labels is not None and scores is None:
            raise DatasetRejected(
                "Labels 'y' need a classifier: one of the model's outputs must be class scores, "
                "[samples, classes] of floats."
            )
        classes = outputs[scores].shape[1] if scores is not None else 0
        if data.labels is not None and data.labels.max(initial=0) >= classes:
            raise DatasetRejected(
                f"'y' has class {int(data.labels.max())} but the model's class scores "
                f"(output {scores}) have {classes} classes."
            )
        eval_summary = {"samples": data.count, "labels": data.labels is not None}
    sample = generate(model.inputs, count=model.inputs[0].fixed_batch or 1)
    batch = model.inputs[0].fixed_batch or 1
    baseline = latency(model, first_batch(sample, batch), lambda: None, latency_seconds)
    return {
        "format": model_format,
        "size_bytes": path.stat().st_size,
        "parameter_count": model.parameter_count,
        "inputs": [spec.as_dict() for spec in model.inputs],
        "op_histogram": dict(sorted(model.op_histogram.items(), key=lambda kv: -kv[1])),
        "baseline_latency_ms": baseline.median_ms,
        "baseline_latency_interval_ms": [baseline.low_ms, baseline.high_ms],
        "baseline_latency_batch": batch,
        "threads": threads,
        "eval_data": eval_summary,
    }
