"""`alert` events for administrators: a session failed, the API's error rate is high.

The error rate is kept per web process over a sliding window; an alert is
raised when it crosses the threshold and cleared when it falls back, never
once per failing request.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from flask import request

from ..tables import OptimizationSession
from . import get, metrics


def _publish(kind: str, level: str, message: str, **data) -> None:
    metrics.ALERTS.labels(kind).inc()
    get("notifications").publish(
        "alert", {"kind": kind, "level": level, "message": message, **data}, admins_only=True
    )


def session_failed(session: OptimizationSession) -> None:
    model = session.model.name if session.model else f"model {session.model_id}"
    _publish(
        "session_failed",
        "error",
        f"Session {session.id} ({model}) failed: {session.error_message}",
        session_id=session.id,
        owner_id=session.owner_id,
        error_type=session.error_type,
    )


class ErrorRateMonitor:
    """Counts /api/ responses in a sliding window and alerts on crossing the threshold."""

    def __init__(
        self,
        threshold: float,
        window_seconds: float,
        min_requests: int,
        min_status: int,
        clock=time.monotonic,
    ):
        self.threshold, self.window, self.min_requests = threshold, window_seconds, min_requests
        self.min_status, self._clock = min_status, clock
        self._lock = threading.Lock()
        self._seen: deque[tuple[float, bool]] = deque()
        self._errors = 0
        self._raised = False

    def record(self, status: int) -> None:
        now = self._clock()
        with self._lock:
            error = status >= self.min_status
            self._seen.append((now, error))
            self._errors += error
            while self._seen and self._seen[0][0] < now - self.window:
                self._errors -= self._seen.popleft()[1]
            requests, errors = len(self._seen), self._errors
            rate = errors / requests
            high = requests >= self.min_requests and rate >= self.threshold
            changed = high != self._raised
            self._raised = high
        if not changed:
            return
        detail = {
            "error_rate": round(rate, 4),
            "threshold": self.threshold,
            "errors": errors,
            "requests": requests,
            "window_seconds": self.window,
            "state": "raised" if high else "cleared",
        }
        if high:
            _publish(
                "api_error_rate",
                "warning",
                f"{rate:.0%} of the API's last {requests} responses were errors "
                f"(threshold {self.threshold:.0%}).",
                **detail,
            )
        else:
            _publish("api_error_rate", "info", f"The API's error rate is back to {rate:.0%}.", **detail)


def init_app(app) -> None:
    config = app.config["OPTIDECK"]["alerts"]
    monitor = ErrorRateMonitor(
        config["api_error_rate_threshold"],
        config["api_error_window_seconds"],
        config["api_error_min_requests"],
        config["api_error_min_status"],
    )
    app.extensions["optideck.error_rate"] = monitor

    @app.after_request
    def count_api_response(response):
        if monitor.threshold > 0 and request.path.startswith("/api/"):
            monitor.record(response.status_code)
        return response
