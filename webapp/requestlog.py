"""Request ids, the one-line request log, and the app's log format."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, request
from flask_login import current_user
from pythonjsonlogger.json import JsonFormatter

log = logging.getLogger("optideck.request")

# A caller's id is echoed only when it is short and plain; anything else could
# forge log lines or headers, so it is replaced by one of ours.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
HANDLER_MARK = "_optideck_handler"


def request_id() -> str:
    """This request's id: the caller's X-Request-ID when plain, else a new one."""
    if "request_id" not in g:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if REQUEST_ID_PATTERN.match(given) else uuid.uuid4().hex
    return g.request_id


def configure_logging(level: str, as_json: bool) -> None:
    logger = logging.getLogger("optideck")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, HANDLER_MARK, False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler()
    setattr(handler, HANDLER_MARK, True)
    if as_json:
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", timestamp=False))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


def init_app(app: Flask) -> None:
    @app.before_request
    def start_request():
        # g outlives a request when an app context was already pushed (a CLI
        # command, a test), and extensions cache identity and CSRF tokens in it:
        # start each request from a clean slate. Registered before every other hook.
        g.__dict__.clear()
        g.started = time.perf_counter()
        request_id()

    @app.after_request
    def log_request(response):
        response.headers["X-Request-ID"] = request_id()
        started = g.get("started")
        duration_ms = (time.perf_counter() - started) * 1000 if started else 0.0
        user = g.get("api_user") or (current_user if current_user.is_authenticated else None)
        fields = {
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(duration_ms, 2),
            "request_id": request_id(),
            "user": user.username if user else None,
            "role": user.role if user else None,
        }
        log.info(
            "%s %s %s %.1fms id=%s user=%s role=%s",
            fields["method"],
            fields["path"],
            fields["status"],
            duration_ms,
            fields["request_id"],
            fields["user"],
            fields["role"],
            extra=fields,
        )
        return response
