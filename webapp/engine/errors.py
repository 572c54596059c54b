"""Errors the engine reports to its caller, each with a stable `kind`."""

import re

# An absolute path of two or more parts; only its last part is kept in what users read.
_PATH = re.compile(r"(?<![\w.])/(?:[^\s/'\"():,]+/)+([^\s/'\"():,]+)")
MESSAGE_LIMIT = 600
# Libraries say "out of memory" in their own words when an allocation hits the sandbox's
# memory limit; these are the ones seen from numpy, torch and ONNX Runtime.
ALLOCATION_FAILURES = (
    "bad_alloc",
    "bad allocation",
    "can't allocate memory",
    "failed to allocate memory",
    "out of memory",
    "cannot allocate memory",
    "unable to allocate",
)


def scrub_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part."""
    return _PATH.sub(r"\1", text)


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation that hit the memory limit, however the library says so."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(words in text for words in ALLOCATION_FAILURES)


def public_message(exc: BaseException) -> str:
    """A library's error in words fit for the user: no file system paths (the sandbox's
    or the server's), up to a readable length, never empty. A long one keeps its start and
    its end: libraries put what failed first and the cause last."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    text = scrub_paths(text) or type(exc).__name__
    if len(text) <= MESSAGE_LIMIT:
        return text
    half = (MESSAGE_LIMIT - 3) // 2
    return f"{text[:half]} … {text[-half:]}"


class EngineError(Exception):
    """A failure the user can act on; `kind` becomes the session's error_type."""

    kind = "engine_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ModelRejected(EngineError):
    """The uploaded file is not a model we accept (or not one at all)."""

    kind = "model_rejected"


class DatasetRejected(EngineError):
    """The evaluation data does not fit the model."""

    kind = "dataset_rejected"


class TechniqueFailed(EngineError):
    kind = "technique_failed"


class Cancelled(Exception):
    """The caller asked to stop; raised at the next check."""


class TimeLimitExceeded(EngineError):
    kind = "timeout"


class ResourceLimit(EngineError):
    """The model needed more memory, CPU time or disk than the sandbox allows."""

    kind = "resource_limit"
