"""The platform's load (`system_status`): workers busy and idle, sessions queued.

Counted from the database, so every web process reports the same numbers. It
is published when it changes; a connecting client gets it from current().
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from flask import Flask
from sqlalchemy import func, select

from ..extensions import db
from ..tables import OptimizationSession, SessionStatus
from . import get

log = logging.getLogger("optideck.status")

# A burst of changes (a script starting twenty sessions) makes one message to every
# client, not twenty: the load is read and published this long after the first change.
SETTLE_SECONDS = 0.25


def current() -> dict:
    counts = dict(
        db.session.execute(
            select(OptimizationSession.status, func.count())
            .where(OptimizationSession.status.in_((SessionStatus.QUEUED.value, SessionStatus.RUNNING.value)))
            .group_by(OptimizationSession.status)
        ).all()
    )
    busy = counts.get(SessionStatus.RUNNING.value, 0)
    capacity = get("executor").status()["capacity"]
    return {
        "busy": busy,
        "idle": max(capacity - busy, 0),
        "capacity": capacity,
        "queued": counts.get(SessionStatus.QUEUED.value, 0),
    }


def workers() -> list[dict] | None:
    """The Celery workers alive now (name, host, pid, concurrency, started), or None: with
    the local executor the web processes are the workers, and with a broker other than
    Redis, or Redis down, they cannot be counted."""
    found = get("executor").workers()
    if found is None:
        return None
    return [{**w, "started_at": datetime.fromtimestamp(w["started"], UTC)} for w in found]


class StatusWatch:
    """Publishes system_status when it differs from what was last published, at most once
    per SETTLE_SECONDS."""

    def __init__(self, app: Flask):
        self._app = app
        self._lock = threading.Lock()
        self._last: dict | None = None
        self._pending: threading.Timer | None = None

    def publish_if_changed(self) -> None:
        with self._lock:
            if self._pending is not None:
                return  # the publish on its way reads the load after this change too
            self._pending = threading.Timer(SETTLE_SECONDS, self._publish)
            self._pending.daemon = True
            self._pending.start()

    def _publish(self) -> None:
        with self._lock:
            self._pending = None  # a change from now on schedules another publish
        try:
            with self._app.app_context():
                try:
                    status = current()
                    with self._lock:
                        if status == self._last:
                            return
                        self._last = status
                    get("notifications").publish("system_status", status)
                finally:
                    db.session.remove()
        except Exception:  # a timer thread has no caller to tell; the next change retries
            log.warning("could not publish system_status", exc_info=True)
