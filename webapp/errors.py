"""One error handler: the JSON error body under /api/, a friendly page elsewhere."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import sqlalchemy.exc
from flask import Flask, jsonify, make_response, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

from .requestlog import request_id

log = logging.getLogger("optideck.errors")

# The `error` word scripts switch on, per status, unless the raiser names one.
ERROR_CODES = {
    400: "validation_error",
    401: "token_missing",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "unprocessable",
    426: "upgrade_required",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}

PAGE_MESSAGES = {
    400: "The request could not be understood. Check what you entered and try again.",
    403: "Your account is not allowed to do this.",
    404: "There is nothing at this address.",
    405: "This address does not accept that kind of request.",
    413: "The upload is larger than this server accepts.",
    429: "Too many attempts. Wait a minute and try again.",
    500: "Something went wrong on our side. The error has been logged.",
}


class ApiError(HTTPException):
    """An API error with its `error` word, message and details."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(description=message)
        self.code = status
        self.data = {"error": error, "message": message, "details": details or {}}
        self.extra_headers = headers or {}


def is_api_request() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def error_body(status: int, error: str, message: str, details: Any = None) -> dict[str, Any]:
    return {
        "error": error,
        "message": message,
        "details": details if details is not None else {},
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "request_id": request_id(),
    }


def _parts(exc: HTTPException) -> tuple[str, str, Any]:
    """(error word, message, details) for any HTTP exception, ours or the framework's."""
    status = exc.code or 500
    data = getattr(exc, "data", None) or {}
    error = data.get("error") or ERROR_CODES.get(status, "error")
    message = data.get("message") or exc.description or exc.name
    details = data.get("details")
    if details is None and "messages" in data:
        # webargs (flask-smorest's parser) puts field errors under `messages`,
        # keyed by location; the field names are what a caller needs. A body that is not
        # JSON at all has its errors under the location itself.
        details = {}
        for location, errors in data["messages"].items():
            details.update(errors if isinstance(errors, dict) else {location: errors})
        message = "The request has invalid fields; see details."
    if isinstance(exc, CSRFError):
        error = "csrf_failed"
        message = "The form's security token is missing or expired. Reload the page and retry."
    return error, message, details


def handle_http_exception(exc: HTTPException):
    status = exc.code or 500
    error, message, details = _parts(exc)
    headers = dict(getattr(exc, "extra_headers", {}))
    data = getattr(exc, "data", None) or {}
    headers.update(data.get("headers") or {})
    if exc.response is not None and status == 429:
        # Flask-Limiter's response carries Retry-After; keep it.
        headers.update({k: v for k, v in exc.response.headers.items() if k == "Retry-After"})
    if is_api_request():
        response = jsonify(error_body(status, error, message, details))
    else:
        # Framework messages are written for developers; pages get plain words.
        own_words = isinstance(exc, CSRFError | ApiError)
        page_message = message if own_words else PAGE_MESSAGES.get(status, message)
        response = make_response(
            render_template("errors/error.html", status=status, title=exc.name, message=page_message)
        )
    response.status_code = status
    valid_methods = getattr(exc, "valid_methods", None)
    if status == 405 and valid_methods:
        response.headers["Allow"] = ", ".join(valid_methods)
    response.headers.update(headers)
    return response


def handle_unexpected(exc: Exception):
    log.exception("unhandled error id=%s", request_id())
    return handle_http_exception(InternalServerError())


# What a client is told when every database connection of its process stayed busy for the
# pool's whole timeout: the server is overloaded, not broken.
BUSY_MESSAGE = "The server is busy; try again in a moment."


def handle_pool_timeout(exc: Exception):
    log.warning("database connection pool exhausted id=%s: answered 503", request_id())
    return handle_http_exception(ApiError(503, "unavailable", BUSY_MESSAGE, headers={"Retry-After": "1"}))


def handle_service_error(exc):
    """A service's refusal, answered like any HTTP error of that status."""
    return handle_http_exception(ApiError(exc.status, exc.error, exc.message, exc.details))


def init_app(app: Flask) -> None:
    from .services.errors import ServiceError

    app.register_error_handler(ServiceError, handle_service_error)
    app.register_error_handler(sqlalchemy.exc.TimeoutError, handle_pool_timeout)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
