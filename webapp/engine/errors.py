"""Errors the engine reports to its caller, each with a stable `kind`."""


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
