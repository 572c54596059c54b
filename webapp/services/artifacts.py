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
from ..engine.search import MAX_KEPT
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
    "converted_size_bytes",
    "reference_detections",  # metrics.detection_basis
)
OPTIONAL_NUMBERS = (
    # A PyTorch upload's ONNX export, on its own (the engine's runner._conversion).
    "converted_latency_ms",
    "converted_latency_low_ms",
    "converted_latency_high_ms",
    "converted_accuracy_retention_percent",
    # What detection F1 rests on (metrics.detection_basis).
    "detection_confidence",
)
WORDS = ("accuracy_kind", "evaluation_inputs")
MAX_STEPS_BYTES = 1 << 20
# A search's candidates: what each may carry, and how many a report may hold.
MAX_CANDIDATES = 64
MAX_COUNT = 1 << 53  # past this a "size" is no size, and JSON numbers lose precision
CANDIDATE_NUMBERS = (
    "latency_ms",
    "latency_low_ms",
    "latency_high_ms",
    "speedup",
    "speedup_low",
    "speedup_high",
    "score",
    "accuracy_retention_percent",
    "size_reduction_percent",
    "weighted_score",
    "seconds",
)
CANDIDATE_COUNTS = ("size_bytes", "compressed_size_bytes")
CANDIDATE_FLAGS = ("pareto", "kept", "meets_criteria")
CANDIDATE_WORDS = {"configuration": 300, "outcome": 16, "reason": 500}


class Refused(Exception):
    """The worker's output is not what a worker of ours makes."""


VERIFY_SECONDS = 120


def check(path: Path) -> tuple[str, int]:
    """(sha256, size) of a valid artifact; raises Refused otherwise."""
    return check_all({"model_path": path})["model_path"]


def check_all(paths: dict[str, Path]) -> dict[str, tuple[str, int]]:
    """(sha256, size) of each valid artifact, by key; raises Refused unless every one is.
    The files are parsed in one sandboxed worker of their own, within one time limit: a
    crafted protobuf costs memory out of all proportion to its size, which the web process
    must never pay, and a search's files must not hold the executor any longer than one."""
    try:
        answer = run_job(get("sandbox"), {"kind": "verify"}, dict(paths), VERIFY_SECONDS, 1, kind="verify")
    except SandboxError as exc:
        raise Refused(str(exc)) from exc
    if answer[0] != "result":
        raise Refused(scrub_paths(str(answer[2]))[:500])
    return {key: get("blobs").digest(path) for key, path in paths.items()}


def kept_candidates(outcome) -> list[int]:
    """The indices of the search candidates the worker says it kept (their files are to be
    taken and checked); none for a session that was not a search."""
    given = outcome.get("results") if isinstance(outcome, dict) else None
    found = given.get("candidates") if isinstance(given, dict) else None
    if found is None:
        return []
    if not isinstance(found, list) or len(found) > MAX_CANDIDATES:
        raise Refused(f"candidates is not a list of at most {MAX_CANDIDATES}")
    kept = [i for i, c in enumerate(found) if isinstance(c, dict) and c.get("kept") is True]
    if len(kept) > MAX_KEPT:
        raise Refused(f"it kept more than {MAX_KEPT} candidates")
    return kept


def results(
    outcome,
    original_size: int,
    artifact_size: int,
    candidate_sizes: dict[int, int] | None = None,
    search: bool = False,
) -> dict:
    """The session's results: the worker's measurements, type-checked, with the sizes
    measured on this side (the artifact's, and each kept search candidate's). A search's
    results must hold its candidates, and only a search's may."""
    if not isinstance(outcome, dict) or not isinstance(outcome.get("results"), dict):
        raise Refused("no results")
    given = outcome["results"]
    cleaned: dict[str, float | int | bool | str | list] = {}
    for key in NUMBERS:
        cleaned[key] = _number(given.get(key), key)
    for key in OPTIONAL_COUNTS:
        if given.get(key) is not None:
            cleaned[key] = _count(given[key], key)
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
    steps = _steps(outcome.get("steps", []), "steps")
    if len(json.dumps(steps)) > MAX_STEPS_BYTES:
        raise Refused("its steps are larger than a report may be")
    cleaned["steps"] = steps
    if search != ("candidates" in given):
        raise Refused("a search's results hold its candidates, and only a search's")
    if search:
        found, sizes = given["candidates"], candidate_sizes or {}
        if not isinstance(found, list) or not found or len(found) > MAX_CANDIDATES:
            raise Refused(f"candidates is not a list of 1 to {MAX_CANDIDATES}")
        if len(json.dumps(found)) > MAX_STEPS_BYTES:
            raise Refused("its candidates are larger than a report may be")
        cleaned["candidates"] = [_candidate(c, i, sizes.get(i), original_size) for i, c in enumerate(found)]
        chosen = given.get("chosen")
        if not isinstance(chosen, int) or isinstance(chosen, bool) or chosen not in sizes:
            raise Refused("chosen is not a kept candidate")
        cleaned["chosen"] = chosen
        if given.get("criteria_reason") is not None:
            cleaned["criteria_reason"] = str(given["criteria_reason"])[:500]
    return cleaned


def clean_candidate(given) -> dict:
    """A candidate's figures as a worker reports them while a search runs, type-checked
    and bounded like the results' (raises Refused)."""
    if (
        not isinstance(given, dict)
        or not isinstance(given.get("index"), int)
        or isinstance(given["index"], bool)
    ):
        raise Refused("not a candidate")
    if not 0 <= given["index"] < MAX_CANDIDATES:
        raise Refused("a candidate's index is out of range")
    cleaned: dict = {"index": given["index"]}
    for key in CANDIDATE_NUMBERS:
        if given.get(key) is not None:
            cleaned[key] = _number(given[key], key)
    for key in CANDIDATE_COUNTS:
        if given.get(key) is not None:
            cleaned[key] = _count(given[key], key)
    for key in CANDIDATE_FLAGS:
        cleaned[key] = given.get(key) is True
    for key, limit in CANDIDATE_WORDS.items():
        if given.get(key) is not None:
            cleaned[key] = scrub_paths(str(given[key]))[:limit]
    cleaned["steps"] = _steps(given.get("steps", []), f"candidate {given['index']}'s steps")
    # Pages name a candidate by its configuration: one without words still gets a name.
    cleaned.setdefault("configuration", f"candidate {given['index']}")
    measured = (
        "speedup",
        "speedup_low",
        "speedup_high",
        "accuracy_retention_percent",
        "size_bytes",
        "size_reduction_percent",
        "latency_ms",
        "latency_low_ms",
        "latency_high_ms",
    )
    if any(key in cleaned for key in measured) and not all(key in cleaned for key in measured):
        raise Refused(f"candidate {given['index']} is measured only in part")
    return cleaned


def _candidate(given, index: int, size: int | None, original_size: int) -> dict:
    cleaned = clean_candidate(given)
    if cleaned["index"] != index:
        raise Refused(f"candidate {index} is not in its place")
    if cleaned["kept"] != (size is not None):
        raise Refused(f"candidate {index} is kept without its file, or the other way round")
    if size is not None:  # measured here, like the artifact's
        cleaned["size_bytes"] = size
        cleaned["size_reduction_percent"] = round(
            100.0 * (original_size - size) / original_size if original_size else 0.0, 2
        )
    return cleaned


STEP_OUTCOMES = {"kept", "kept_despite_violation", "rolled_back", "failed", "skipped"}


def _steps(steps, what: str) -> list[dict]:
    """A report's steps, with the fields pages read typed as pages read them: a worker's
    odd step (a list for an outcome, say) would otherwise break every page listing it."""
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise Refused(f"{what} are not a list of steps")
    for step in steps:
        if not isinstance(step.get("technique"), str) or len(step["technique"]) > 40:
            raise Refused(f"{what}: a step's technique is not a name")
        if not isinstance(step.get("params", {}), dict):
            raise Refused(f"{what}: a step's parameters are not an object")
        if "outcome" in step and not (isinstance(step["outcome"], str) and step["outcome"] in STEP_OUTCOMES):
            raise Refused(f"{what}: a step's outcome is not one a step can have")
        if "reason" in step:
            step["reason"] = None if step["reason"] is None else scrub_paths(str(step["reason"]))[:500]
    return steps


def _count(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_COUNT:
        raise Refused(f"{key} is not a whole number of bytes")
    return value


def _number(value, key: str) -> float:
    try:
        if isinstance(value, bool) or not math.isfinite(float(value)):
            raise ValueError
    except (TypeError, ValueError, OverflowError) as exc:
        raise Refused(f"{key} is not a number") from exc
    return float(value)
