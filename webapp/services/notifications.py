"""Publish and subscribe of platform events (DESIGN.md's live event names).

The in-process backend serves the embedded default: one web process. Each
subscriber has its own bounded queue, so a slow one never holds up publish.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import metrics

log = logging.getLogger("optideck.notifications")

EVENTS = ("session_started", "session_progress", "session_completed", "session_failed",
          "session_cancelled", "system_status", "alert")


@dataclass
class Notification:
    event: str
    data: dict
    owner_id: int | None  # who may see it (admins see all); None: everyone
    admins_only: bool = False  # alerts: for administrators whoever owns what
    timestamp: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z")
    )


class Subscription:
    def __init__(self, service: NotificationService, size: int):
        self._service = service
        self.queue: queue.Queue[Notification] = queue.Queue(maxsize=size)
        self.dropped = 0

    def get(self, timeout: float | None = None) -> Notification | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._service.unsubscribe(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NotificationService:
    def __init__(self, queue_size: int = 1000):
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        subscription = Subscription(self, self.queue_size)
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def publish(self, event: str, data: dict, owner_id: int | None = None,
                admins_only: bool = False) -> Notification:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        notification = Notification(event, data, owner_id, admins_only)
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            try:
                subscription.queue.put_nowait(notification)
            except queue.Full:
                subscription.dropped += 1
                metrics.EVENTS_DROPPED.inc()
        metrics.EVENTS_PUBLISHED.labels(event).inc()
        log.debug("published %s owner=%s admins_only=%s to %d subscribers",
                  event, owner_id, admins_only, len(subscribers))
        return notification
