"""Measure a model: size on disk, latency, accuracy or agreement."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .datasets import EvalData
from .loading import LoadedModel
from .timing import Latency, latency

ACCURACY = "accuracy"
TOP1_AGREEMENT = "top1_agreement"
COSINE_SIMILARITY = "cosine_similarity"


@dataclass
class Measurement:
    size_bytes: int
    compressed_size_bytes: int | None  # deflate of the file: what pruning's zeros save
    latency_ms: float  # median over repeated runs after warm-up, one batch
    latency_low_ms: float  # the median's 95 % interval (timing.median_interval)
    latency_high_ms: float
    latency_batch: int
    score: float  # accuracy, top-1 agreement or cosine similarity, 0..1
    score_kind: str

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
        feeds = {}
        for name, array in data.inputs.items():
            part = array[start:stop]
            if len(part) < batch:
                part = np.concatenate([part, np.repeat(part[-1:], batch - len(part), axis=0)])
            feeds[name] = part
        yield feeds, stop - start


def predict(model: LoadedModel, data: EvalData, batch: int, check: Callable[[], None]) -> np.ndarray:
    """The first output of the model over the whole data set."""
    outputs = []
    for feeds, used in batches(data, batch):
        check()
        outputs.append(np.asarray(model.run(feeds)[0])[:used])
    return np.concatenate(outputs).astype(np.float32, copy=False)


def first_batch(data: EvalData, batch: int) -> dict[str, np.ndarray]:
    """The inputs every latency of a model is timed on."""
    feeds, _ = next(batches(data, batch))
    return feeds


def is_classifier(outputs: np.ndarray) -> bool:
    return outputs.ndim == 2 and outputs.shape[1] > 1


def score(outputs: np.ndarray, data: EvalData, reference: np.ndarray) -> tuple[float, str]:
    """Accuracy with labels; otherwise agreement with the original model's outputs."""
    if data.labels is not None and is_classifier(outputs):
        return float((outputs.argmax(axis=1) == data.labels).mean()), ACCURACY
    if is_classifier(outputs):
        return float((outputs.argmax(axis=1) == reference.argmax(axis=1)).mean()), TOP1_AGREEMENT
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
    return float(cosine.mean()), COSINE_SIMILARITY


def measure(
    path: Path,
    model: LoadedModel,
    data: EvalData,
    batch: int,
    reference: np.ndarray | None,
    check: Callable[[], None],
    compressed: bool = False,
    timed: Latency | None = None,
) -> tuple[Measurement, np.ndarray]:
    """`timed`: the model's latency when the caller timed it already (paired with another)."""
    outputs = predict(model, data, batch, check)
    value, kind = score(outputs, data, outputs if reference is None else reference)
    timed = timed or latency(model, first_batch(data, batch), check)
    measurement = Measurement(
        size_bytes=path.stat().st_size,
        compressed_size_bytes=compressed_size(path) if compressed else None,
        latency_ms=timed.median_ms,
        latency_low_ms=timed.low_ms,
        latency_high_ms=timed.high_ms,
        latency_batch=batch,
        score=value,
        score_kind=kind,
    )
    return measurement, outputs
