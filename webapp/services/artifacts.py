"""What a worker hands back, checked on the trusted side before it is stored or shown.

A worker opened a hostile file, so its artifact and its figures are data to check, not
facts: the artifact must be one plain ONNX file that ONNX Runtime's own operators run and
that names no file outside itself; the sizes are measured here; the rest must be numbers
and short words.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..engine import screening
from ..engine.errors import ModelRejected
from . import get

NUMBERS = (
    "original_latency_ms",
    "optimized_latency_ms",
    "accuracy_before",
    "accuracy_after",
    "speed_improvement_percent",
    "speedup",
    "accuracy_retention_percent",
)
OPTIONAL_NUMBERS = ("original_compressed_size_bytes", "optimized_compressed_size_bytes", "latency_batch_size")
WORDS = ("accuracy_kind", "evaluation_inputs")


class Refused(Exception):
    """The worker's output is not what a worker of ours makes."""


def check(path: Path) -> tuple[str, int]:
    """(sha256, size) of a valid artifact; raises Refused otherwise."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        screening.check_onnx(model)
    except ModelRejected as exc:
        raise Refused(exc.message) from exc
    except Exception as exc:  # protobuf's decode errors have no common base
        raise Refused("it is not an ONNX model") from exc
    return get("blobs").digest(path)


def results(outcome, original_size: int, artifact_size: int) -> dict:
    """The session's results: the worker's measurements, type-checked, with the sizes
    measured on this side."""
    if not isinstance(outcome, dict) or not isinstance(outcome.get("results"), dict):
        raise Refused("no results")
    given = outcome["results"]
    cleaned = {}
    for key in NUMBERS:
        cleaned[key] = _number(given.get(key), key)
    for key in OPTIONAL_NUMBERS:
        if given.get(key) is not None:
            cleaned[key] = _number(given[key], key)
    for key in WORDS:
        cleaned[key] = str(given.get(key, ""))[:32]
    if not isinstance(given.get("criteria_met"), bool):
        raise Refused("criteria_met is not true or false")
    cleaned["criteria_met"] = given["criteria_met"]
    cleaned["original_size_bytes"] = original_size
    cleaned["optimized_size_bytes"] = artifact_size
    cleaned["size_reduction_percent"] = round(
        100.0 * (original_size - artifact_size) / original_size if original_size else 0.0, 2
    )
    steps = outcome.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise Refused("steps is not a list of steps")
    cleaned["steps"] = steps
    return cleaned


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Refused(f"{key} is not a number")
    return value
