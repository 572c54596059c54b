"""Measure a model: size on disk, latency, and the figure of its task metric (accuracy or
an agreement; the detection and sequence metrics are in metrics.py)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import metrics
from .datasets import EvalData
from .loading import LoadedModel
from .metrics import AGREEMENT, AUTO, CLASSIFICATION, CTC, DETECTION, TASKS, TaskMismatch
from .timing import BUDGET_S, Latency, latency

ACCURACY = "accuracy"  # with labels: the class-score output's top class against them
# Without labels, each output is compared with the original's, in the way that fits it, and
# the worst output is the model's score: a detector's small class scores or a second head
# cannot hide behind a large first tensor.
TOP1_AGREEMENT = "top1_agreement"  # class scores [samples, classes]: the same top class
EXACT_AGREEMENT = "exact_agreement"  # whole numbers (labels, indices): the same values
VALUE_AGREEMENT = "value_agreement"  # other tensors: 1 - relative error, per sample
# The detection and sequence tasks' kinds are metrics.DETECTION_F1 and SEQUENCE_EXACT_MATCH.


@dataclass
class Measurement:
    size_bytes: int
    compressed_size_bytes: int | None  # deflate of the file: what pruning's zeros save
    latency_ms: float  # median over repeated runs after warm-up, one batch
    latency_low_ms: float  # the median's 95 % interval (timing.median_interval)
    latency_high_ms: float
    latency_batch: int
    score: float  # the task metric's figure (accuracy, or an agreement), 0..1
    score_kind: str
    outputs: list[dict]  # each compared output: {"output": index, "kind": ..., "value": ...}

    def as_dict(self) -> dict:
        return asdict(self)


def compressed_size(path: Path) -> int:
    compressor = zlib.compressobj(1)  # fast: zeros and repeats compress at any level
    total = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def batches(data: EvalData, batch: int):
    """Slices of the data, the last one padded by repetition to a full batch."""
    count = data.count
    for start in range(0, count, batch):
        stop = min(start + batch, count)
        yield data.take(start, stop, pad_to=batch), stop - start


def first_batch(data: EvalData, batch: int) -> dict[str, np.ndarray]:
    """The inputs every latency of a model is timed on."""
    feeds, _ = next(batches(data, batch))
    return feeds


def predict(
    model: LoadedModel, data: EvalData, batch: int, check: Callable[[], None], task: str = AUTO
) -> list[np.ndarray]:
    """Every output of the model over the whole data set (one array per output); an output
    that is not a tensor of numbers (a list of maps, say) is an empty array."""
    parts: list[list[np.ndarray]] = []
    for feeds, used in batches(data, batch):
        check()
        for index, value in enumerate(model.run(feeds)):
            array = np.asarray(value)
            if task == CTC:
                # CTC heads are often time-major; samples must come first to be sliced.
                array = metrics.samples_first(array, batch)
            if index == len(parts):
                parts.append([])
            parts[index].append(array[:used] if array.ndim and array.dtype != object else np.empty(0))
    return [np.concatenate(chunks) if all(c.size for c in chunks) else np.empty(0) for chunks in parts]


def is_classifier(output: np.ndarray) -> bool:
    return output.ndim == 2 and output.shape[1] > 1 and np.issubdtype(output.dtype, np.floating)


def class_scores(outputs: list[np.ndarray]) -> int | None:
    """The index of the output labels are checked against: the first [samples, classes]
    output of floats (a classifier exported with its label output first still has one)."""
    return next((i for i, output in enumerate(outputs) if is_classifier(output)), None)


def agreement(output: np.ndarray, reference: np.ndarray) -> tuple[float, str]:
    """How far one output stays from the original's, 0..1, and how that was judged."""
    if output.shape != reference.shape:
        return 0.0, VALUE_AGREEMENT
    if is_classifier(reference):
        return float((output.argmax(axis=1) == reference.argmax(axis=1)).mean()), TOP1_AGREEMENT
    if not np.issubdtype(reference.dtype, np.floating):
        same = (output.reshape(len(output), -1) == reference.reshape(len(reference), -1)).all(axis=1)
        return float(same.mean()), EXACT_AGREEMENT
    a = output.reshape(len(output), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    reference_norm = np.linalg.norm(b, axis=1)
    error = np.linalg.norm(a - b, axis=1)
    # A sample whose original output is all zeros agrees when the new one is zero too.
    relative = np.where(reference_norm > 1e-12, error / np.maximum(reference_norm, 1e-12), error > 1e-12)
    return float(np.clip(1.0 - relative, 0.0, 1.0).mean()), VALUE_AGREEMENT


def score(
    outputs: list[np.ndarray], data: EvalData, reference: list[np.ndarray], task: str = AUTO
) -> tuple[float, str, list[dict]]:
    """The figure of `task` (metrics.TASKS) for `outputs`, 0..1, its kind and each compared
    output's figure. `auto`: accuracy with labels, otherwise the worst agreement of any
    output with the original. Raises TaskMismatch when the outputs do not fit the task."""
    if task not in TASKS:
        raise TaskMismatch(f"Unknown task metric {task!r}; known: {', '.join(TASKS)}.")
    if task == DETECTION:
        return metrics.detection_f1(outputs, reference, data.truth)
    if task == CTC:
        return metrics.sequence_exact_match(outputs, reference, data.truth)
    scores = class_scores(outputs)
    if task == CLASSIFICATION:
        if scores is None:
            raise TaskMismatch(
                "The classification metric needs an output of class scores, [samples, classes] "
                "of floats; this model has none. Upload it with another task metric."
            )
        if data.labels is None:
            value, kind = agreement(outputs[scores], reference[scores])
            return round(value, 6), kind, [{"output": scores, "kind": kind, "value": round(value, 6)}]
    if data.labels is not None and scores is not None and task != AGREEMENT:
        value = float((outputs[scores].argmax(axis=1) == data.labels).mean())
        return value, ACCURACY, [{"output": scores, "kind": ACCURACY, "value": round(value, 6)}]
    judged: list[tuple[float, str, int]] = []
    for index, (output, original) in enumerate(zip(outputs, reference, strict=False)):
        if not original.size:
            continue  # not a tensor (a list of maps): its tensor twin, if any, is compared
        value, kind = agreement(output, original)
        judged.append((round(value, 6), kind, index))
    if not judged:
        return 1.0, EXACT_AGREEMENT, []
    worst = min(judged)
    return worst[0], worst[1], [{"output": i, "kind": k, "value": v} for v, k, i in judged]


def measure(
    path: Path,
    model: LoadedModel,
    data: EvalData,
    batch: int,
    reference: list[np.ndarray] | None,
    check: Callable[[], None],
    compressed: bool = False,
    timed: Latency | None = None,
    budget_s: float = BUDGET_S,
    task: str = AUTO,
) -> tuple[Measurement, list[np.ndarray]]:
    """`timed`: the model's latency when the caller timed it already (paired with another);
    `task`: the metric of metrics.TASKS that scores it."""
    outputs = predict(model, data, batch, check, task)
    value, kind, compared = score(outputs, data, outputs if reference is None else reference, task)
    timed = timed or latency(model, first_batch(data, batch), check, budget_s)
    measurement = Measurement(
        size_bytes=path.stat().st_size,
        compressed_size_bytes=compressed_size(path) if compressed else None,
        latency_ms=timed.median_ms,
        latency_low_ms=timed.low_ms,
        latency_high_ms=timed.high_ms,
        latency_batch=batch,
        score=value,
        score_kind=kind,
        outputs=compared,
    )
    return measurement, outputs
