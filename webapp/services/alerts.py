"""`alert` events for administrators: a session failed, the API's error rate is high.

The error rate is kept over a sliding window, per web process by default and on Redis
(per-second buckets every process adds to) when redis.url is set; an alert is raised when
it crosses the threshold and cleared when it falls back, never once per failing request,
and with Redis once for all processes, not once per process.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque

import redis
from flask import current_app, request

from ..tables import OptimizationSession
from . import get, metrics

log = logging.getLogger("optideck.alerts")


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
            high = requests >= self.min_requests and errors / requests >= self.threshold
            changed = high != self._raised
            self._raised = high
        if changed:
            self._announce(high, requests, errors)

    def _announce(self, high: bool, requests: int, errors: int) -> None:
        rate = errors / requests if requests else 0.0
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


# How often a process sends its counts to the shared window and reads the window back
# while it sees only healthy responses: one round trip per second per process, not one per
# response (that pipeline was an eighth of a cached list page's time, bench/session_list.py).
EVALUATE_SECONDS = 1.0


class SharedErrorRateMonitor(ErrorRateMonitor):
    """The same window on Redis: every process adds its responses to per-second buckets,
    reads the window's sum, and the raised state is one key, so of all processes exactly
    one announces each crossing. Redis trouble costs the count, never the request.

    A process gathers its counts in memory and sends them, with the window's read, in one
    pipeline: at once on an error, or on any response while the alert is believed raised
    (so a crossing is seen by the response that makes it), and otherwise from a
    background thread once per EVALUATE_SECONDS (so an idle process's counts are not kept
    back), and once more when the process exits (`send_at_exit`).
    """

    KEY = "optideck:api_errors"

    def __init__(
        self,
        url: str,
        threshold: float,
        window_seconds: float,
        min_requests: int,
        min_status: int,
        clock=time.time,
    ):
        # Wall-clock seconds: processes (and hosts, with NTP) agree on which bucket is now.
        super().__init__(threshold, window_seconds, min_requests, min_status, clock=clock)
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._believed_raised = False
        # second -> [responses, errors] not yet added to the shared buckets
        self._pending: dict[int, list[int]] = {}
        self._sending = threading.Lock()  # one pipeline at a time, in order
        self._flusher: threading.Thread | None = None
        self._stopping = threading.Event()

    def record(self, status: int) -> None:
        error = status >= self.min_status
        with self._lock:
            counts = self._pending.setdefault(int(self._clock()), [0, 0])
            counts[0] += 1
            counts[1] += error
            if self._flusher is None and not self._stopping.is_set():
                self._start_flusher()
            if not (error or self._believed_raised):
                return
        # A request never queues behind another's round trip (Redis may be slow): while a
        # flush is under way, these counts wait for the next one.
        self.flush(wait=False)

    def _start_flusher(self) -> None:
        # Started on first use, in the process that serves (gunicorn forks first).
        app = weakref.ref(current_app._get_current_object())  # type: ignore[attr-defined]
        flusher = threading.Thread(
            target=_flush_every, args=(app, self._stopping), name="optideck-error-rate", daemon=True
        )
        try:
            flusher.start()
        except RuntimeError:  # no thread to be had: counted at errors only, tried again later
            log.warning("api error rate: could not start its background thread", exc_info=True)
            return
        self._flusher = flusher

    def flush(self, wait: bool = True) -> None:
        """Send the counts gathered since the last flush and act on the window's state."""
        if not self._sending.acquire(blocking=wait):
            return
        try:
            with self._lock:
                if not self._pending and not self._believed_raised:
                    return  # idle and healthy: nothing to send, nothing to clear
                pending, self._pending = self._pending, {}
            self._send(pending)
        finally:
            self._sending.release()

    def stop(self, send_held: bool = False) -> None:
        """End the background thread (tests, shutdown); with send_held, the counts not yet
        sent go to Redis first, else they are dropped."""
        self._stopping.set()
        if self._flusher is not None:
            self._flusher.join(EVALUATE_SECONDS + 1)
        if send_held:
            self.flush()

    def _send(self, pending: dict[int, list[int]]) -> None:
        span = int(max(self.window, 1))
        current = int(self._clock())
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for second, (requests, errors) in pending.items():
                    bucket = f"{self.KEY}:{second}"
                    pipe.hincrby(bucket, "requests", requests)
                    if errors:
                        pipe.hincrby(bucket, "errors", errors)
                    pipe.expire(bucket, span + 5)
                for second in range(current - span + 1, current + 1):
                    pipe.hmget(f"{self.KEY}:{second}", "requests", "errors")
                pipe.exists(f"{self.KEY}:raised")
                answers = pipe.execute()
            window, raised = answers[-span - 1 : -1], bool(answers[-1])
            requests = sum(int(r or 0) for r, _ in window)
            errors = sum(int(e or 0) for _, e in window)
            high = requests >= self.min_requests and errors / requests >= self.threshold
            self._believed_raised = high
            # SET NX / DEL: the one process whose write changes the state announces it
            # (asked only when the state read with the window differs: the usual healthy
            # evaluation is one round trip).
            changed = False
            if high and not raised:
                changed = bool(self._redis.set(f"{self.KEY}:raised", 1, nx=True))
            elif raised and not high:
                changed = bool(self._redis.delete(f"{self.KEY}:raised"))
        except redis.RedisError as exc:
            log.warning("api error rate not counted: %s", exc)
            return
        if changed:
            self._announce(high, requests, errors)


def _flush_every(app_ref, stopping: threading.Event) -> None:
    """The background flush of one app's monitor, until it is stopped or the app is gone
    (its alerts need the app's notification service)."""
    while not stopping.wait(EVALUATE_SECONDS):
        app = app_ref()
        if app is None:
            return
        try:
            with app.app_context():
                app.extensions["optideck.error_rate"].flush()
        except Exception:  # the thread must outlive any one failure
            log.exception("api error rate flush failed")
        del app


def send_at_exit(app) -> None:
    """A web process leaving (wsgi.py's atexit): what it counted in its last second still
    reaches the shared window, so other processes judge the error rate with it."""
    monitor = app.extensions.get("optideck.error_rate")
    if isinstance(monitor, SharedErrorRateMonitor):
        with app.app_context():
            try:
                monitor.stop(send_held=True)
            except Exception:  # exiting anyway: say so, never hang or raise at exit
                log.exception("api error rate: the last counts could not be sent")


def init_app(app) -> None:
    config = app.config["OPTIDECK"]["alerts"]
    settings = (
        config["api_error_rate_threshold"],
        config["api_error_window_seconds"],
        config["api_error_min_requests"],
        config["api_error_min_status"],
    )
    url = app.config["OPTIDECK"]["redis"]["url"]
    monitor = SharedErrorRateMonitor(url, *settings) if url else ErrorRateMonitor(*settings)
    app.extensions["optideck.error_rate"] = monitor

    @app.after_request
    def count_api_response(response):
        if monitor.threshold > 0 and request.path.startswith("/api/"):
            monitor.record(response.status_code)
        return response
