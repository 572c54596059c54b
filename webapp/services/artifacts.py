"""What a worker hands back, checked on the trusted side before it is stored or shown.

A worker opened a hostile file, so its artifact and its figures are data to check, not
facts: the artifact must be one plain ONNX file that ONNX Runtime's own operators run and
that names no file outside itself; the sizes are measured here; the rest must be numbers
and short words.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..engine.errors import scrub_paths
from . import get
from .sandbox import SandboxError, run_job

NUMBERS = (
    "original_latency_ms",
    "original_latency_low_ms",
    "original_latency_high_ms",
    "optimized_latency_ms",
    "optimized_latency_low_ms",
    "optimized_latency_high_ms",
    "accuracy_before",
    "accuracy_after",
    "speed_improvement_percent",
    "speedup",
    "speedup_low",
    "speedup_high",
    "accuracy_retention_percent",
)
OPTIONAL_COUNTS = (
    "original_compressed_size_bytes",
    "optimized_compressed_size_bytes",
    "latency_batch_size",
    "latency_rounds",
)
WORDS = ("accuracy_kind", "evaluation_inputs")
MAX_STEPS_BYTES = 1 << 20


class Refused(Exception):
    """The worker's output is not what a worker of ours makes."""


VERIFY_SECONDS = 120


def check(path: Path) -> tuple[str, int]:
    """(sha256, size) of a valid artifact; raises Refused otherwise. The file is parsed in
    a sandboxed worker of its own: a crafted protobuf costs memory out of all proportion to
    its size, which the web process must never pay."""
    try:
        answer = run_job(
            get("sandbox"), {"kind": "verify"}, {"model_path": path}, VERIFY_SECONDS, 1, kind="verify"
        )
    except SandboxError as exc:
        raise Refused(str(exc)) from exc
    if answer[0] != "result":
        raise Refused(scrub_paths(str(answer[2]))[:500])
    return get("blobs").digest(path)


def results(outcome, original_size: int, artifact_size: int) -> dict:
    """The session's results: the worker's measurements, type-checked, with the sizes
    measured on this side."""
    if not isinstance(outcome, dict) or not isinstance(outcome.get("results"), dict):
        raise Refused("no results")
    given = outcome["results"]
    cleaned: dict[str, float | int | bool | str | list] = {}
    for key in NUMBERS:
        cleaned[key] = _number(given.get(key), key)
    for key in OPTIONAL_COUNTS:
        if given.get(key) is not None:
            cleaned[key] = _count(given[key], key)
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
    if len(json.dumps(steps)) > MAX_STEPS_BYTES:
        raise Refused("its steps are larger than a report may be")
    cleaned["steps"] = steps
    return cleaned


def _count(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Refused(f"{key} is not a whole number")
    return value


def _number(value, key: str) -> float:
    try:
        if isinstance(value, bool) or not math.isfinite(float(value)):
            raise ValueError
    except (TypeError, ValueError, OverflowError) as exc:
        raise Refused(f"{key} is not a number") from exc
    return float(value)
