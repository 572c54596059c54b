"""The error services raise for the pages and the API to show."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A rule refused the request: `status` and `error` for the API, `message` for people."""

    def __init__(self, status: int, error: str, message: str, details: Any = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details or {}
