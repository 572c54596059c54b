"""Gunicorn settings `flask serve` passes with `-c python:webapp.gunicorn_conf`.

On a graceful stop (SIGTERM) gunicorn waits for the requests in flight, and
each open WebSocket is one that never ends by itself. The worker first tells
the live handlers to close with 1012, so browsers reconnect to the next server.

Requests gunicorn itself refuses (a request line past its limit, a malformed header)
never reach the app; under /api/ the worker answers them with the API's error body.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from datetime import UTC, datetime

from gunicorn.http.message import Request
from gunicorn.workers.gthread import ThreadWorker

worker_class = "webapp.gunicorn_conf.ApiErrorWorker"

# gunicorn's own refusals, by the status it answers (base.Worker.handle_error).
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}
_MESSAGES = {
    400: "The request is not valid HTTP; see details.",
    414: "The request line (method, path and query) is longer than the server accepts.",
    431: "The request's headers are larger than the server accepts.",
}


def post_worker_init(worker):
    from webapp.live.connection import begin_shutdown

    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        begin_shutdown()
        gunicorn_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def child_exit(server, worker):
    # prometheus-client's multiprocess mode: a dead worker's live gauges (open sockets)
    # stop counting.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def refused_path(req, exc: BaseException) -> str | None:
    """The path of a request gunicorn refused, where it got that far: the parsed request,
    or else the bytes its parser had read (a request line too long to parse still starts
    with its method and path)."""
    if req is not None and getattr(req, "path", None):
        return req.path
    traceback = exc.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame.f_locals
        if isinstance(frame.get("self"), Request):
            if getattr(frame["self"], "path", None):
                return frame["self"].path
            read = frame.get("buf")
            if isinstance(read, bytes | bytearray):
                parts = bytes(read[:4096]).split(b" ", 2)
                if len(parts) > 1:
                    return parts[1].split(b"?", 1)[0].decode("latin-1")
        traceback = traceback.tb_next
    return None


def is_api_path(path: str | None) -> bool:
    return path is not None and (path == "/api" or path.startswith("/api/"))


class ApiErrors:
    """gunicorn's own error answers in the API's JSON body under /api/ (the HTML page it
    writes elsewhere is left as it is); mixed into either worker class."""

    def handle_error(self, req, client, addr, exc):
        if not is_api_path(refused_path(req, exc)):
            return super().handle_error(req, client, addr, exc)
        # gunicorn decides the status and logs the refusal; only its body is replaced.
        answer = _Captured()
        super().handle_error(req, answer, addr, exc)
        status = _status_of(bytes(answer.data))
        # A refusal's reason helps the client; a 5xx's text is the server's business.
        try:
            client.sendall(json_error(status, str(exc) if status < 500 else ""))
        except OSError:
            self.log.debug("Failed to send error message.")


class ApiErrorWorker(ApiErrors, ThreadWorker):
    """gthread (server.worker_class = "gthread"): a thread per connection."""


class _Captured:
    """Stands in for the client's socket while gunicorn writes its answer (util.write_error)."""

    def __init__(self):
        self.data = bytearray()

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag) -> None:
        pass

    def sendall(self, data) -> None:
        self.data += data


def _status_of(response: bytes) -> int:
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 400


def json_error(status: int, reason: str) -> bytes:
    from webapp.errors import ERROR_CODES

    request_id = uuid.uuid4().hex
    body = json.dumps(
        {
            "error": ERROR_CODES.get(status, "bad_request"),
            "message": _MESSAGES.get(status, reason[:200] or _REASONS.get(status, "Error")),
            "details": {"server": [reason[:200]]} if reason else {},
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "request_id": request_id,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n"
    )
    return head.encode("latin-1") + body
