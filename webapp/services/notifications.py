"""Publish and subscribe of platform events (the README's "Live events" names them).

The in-process backend serves the embedded default: one web process. Each
subscriber has its own bounded queue, so a slow one never holds up publish.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

from . import metrics

log = logging.getLogger("optideck.notifications")

EVENTS = (
    "session_started",
    "session_progress",
    "session_completed",
    "session_failed",
    "session_cancelled",
    "system_status",
    "alert",
)


@dataclass
class Notification:
    event: str
    data: dict
    owner_id: int | None  # who may see it (admins see all); None: everyone
    admins_only: bool = False  # alerts: for administrators whoever owns what
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z"))

    @cached_property
    def json(self) -> str:
        """The event as scripts receive it; made once, however many clients it goes to."""
        return json.dumps({"event": self.event, "data": self.data, "timestamp": self.timestamp}, default=str)


class Subscription:
    def __init__(
        self, service: NotificationService, size: int, accepts: Callable[[Notification], bool] | None
    ):
        self._service = service
        self.accepts = accepts
        self.size = size
        # SimpleQueue is C all the way: with a thousand subscribers, queue.Queue's Python
        # Condition made each publish a storm of GIL hand-offs. It has no bound of its own,
        # so put() keeps it (give or take a racing put or two).
        self._queue: queue.SimpleQueue[Notification | None] = queue.SimpleQueue()
        self.dropped = 0

    def put(self, notification: Notification) -> bool:
        """Queue the event, unless the subscriber is this far behind (then it must resync)."""
        if self._queue.qsize() >= self.size:
            self.dropped += 1
            return False
        self._queue.put(notification)
        return True

    def get(self, timeout: float | None = None) -> Notification | None:
        """The next event; None after the timeout or a wake()."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def clear(self) -> None:
        """Forget what is queued (the subscriber is about to read the state afresh)."""
        for _ in range(self._queue.qsize()):
            self.get(timeout=0)

    def wake(self) -> None:
        """Make a waiting get() return None now (something other than an event happened)."""
        self._queue.put(None)

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

    def subscribe(self, accepts: Callable[[Notification], bool] | None = None) -> Subscription:
        """A queue of the events `accepts` lets through (all without it). The filter runs
        at publish time, so a client is not woken for what it may not see."""
        subscription = Subscription(self, self.queue_size, accepts)
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def publish(
        self, event: str, data: dict, owner_id: int | None = None, admins_only: bool = False
    ) -> Notification:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        notification = Notification(event, data, owner_id, admins_only)
        with self._lock:
            subscribers = list(self._subscribers)
        delivered = 0
        for subscription in subscribers:
            if subscription.accepts is not None and not subscription.accepts(notification):
                continue
            delivered += 1
            if not subscription.put(notification):
                metrics.EVENTS_DROPPED.inc()
        metrics.EVENTS_PUBLISHED.labels(event).inc()
        log.debug(
            "published %s owner=%s admins_only=%s to %d of %d subscribers",
            event,
            owner_id,
            admins_only,
            delivered,
            len(subscribers),
        )
        return notification
