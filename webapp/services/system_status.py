"""The platform's load (`system_status`): workers busy and idle, sessions queued.

Counted from the database, so every web process reports the same numbers. It
is published when it changes; a connecting client gets it from current().
"""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from ..extensions import db
from ..models import OptimizationSession, SessionStatus
from . import get


def current() -> dict:
    counts = dict(db.session.execute(
        select(OptimizationSession.status, func.count())
        .where(OptimizationSession.status.in_((SessionStatus.QUEUED.value,
                                               SessionStatus.RUNNING.value)))
        .group_by(OptimizationSession.status)).all())
    busy = counts.get(SessionStatus.RUNNING.value, 0)
    capacity = get("executor").status()["capacity"]
    return {"busy": busy, "idle": max(capacity - busy, 0), "capacity": capacity,
            "queued": counts.get(SessionStatus.QUEUED.value, 0)}


class StatusWatch:
    """Publishes system_status only when it differs from what was last published."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last: dict | None = None

    def publish_if_changed(self) -> None:
        status = current()
        with self._lock:
            if status == self._last:
                return
            self._last = status
        get("notifications").publish("system_status", status)
