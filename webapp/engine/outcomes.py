"""How a step or candidate turned out, shared by the plan's runner and the search."""

from __future__ import annotations

from .errors import (
    Cancelled,
    ResourceLimit,
    TechniqueFailed,
    TimeLimitExceeded,
    out_of_memory,
    public_message,
)
from .evaluation import ACCURACY, Measurement
from .metrics import LABELLED_DETECTION_F1, SEQUENCE_ACCURACY


def failure(exc: Exception) -> tuple[str, str]:
    """("skipped" or "failed", why) for an exception that costs one step or candidate;
    re-raises one that ends the session."""
    if isinstance(exc, TechniqueFailed):
        return "skipped", exc.message
    if isinstance(exc, (Cancelled, TimeLimitExceeded, ResourceLimit)):
        raise exc  # the session's end
    if out_of_memory(exc):
        # An allocation refused at the sandbox's cap: what the step held is freed as its
        # frames unwind, so the session goes on (a search keeps the candidates it measured).
        return "failed", (
            "Out of memory: this step needed more than the sandbox allows (sandbox.memory_mb). "
            f"{public_message(exc)}"
        )
    # A library that crashes on this model (an opset it cannot handle, a graph its converter
    # breaks) costs the step; the session goes on from the last kept model.
    return "failed", f"{type(exc).__name__}: {public_message(exc)}"


# Scores against the evaluation data's labels: the original's own score is the baseline.
AGAINST_LABELS = (ACCURACY, LABELLED_DETECTION_F1, SEQUENCE_ACCURACY)


def retention(baseline: Measurement, m: Measurement) -> float:
    if baseline.score_kind in AGAINST_LABELS:
        return 100.0 * m.score / baseline.score if baseline.score > 0 else 0.0
    # Agreement is measured against the original, which agrees with itself fully.
    return 100.0 * m.score


def reduction(before: float, after: float) -> float:
    return 100.0 * (before - after) / before if before else 0.0
