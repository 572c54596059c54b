"""What both WebSocket endpoints share: origin checks, the send loop, shutdown."""

from __future__ import annotations

import logging
import threading
import weakref
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from flask import current_app, request

from ..extensions import db
from ..models import OptimizationSession, Role, SessionStatus, User, utcnow
from ..services import get, metrics, optimization, visibility
from ..services.notifications import Notification

log = logging.getLogger("optideck.live")

# The htmx ws extension reconnects only after 1006, 1012 and 1013: a server
# going away says 1012 ("service restart") so pages come back by themselves.
SERVICE_RESTART = 1012
POLICY_VIOLATION = 1008
# A handler sleeps until an event, a client message, the client leaving or a shutdown
# wakes it; this is only the longest it sleeps should a wake-up be missed.
IDLE_SECONDS = 5.0

# What a session's current status looks like as an event, for snapshots.
EVENT_FOR_STATUS = {
    SessionStatus.QUEUED.value: "session_progress",
    SessionStatus.RUNNING.value: "session_progress",
    SessionStatus.COMPLETED.value: "session_completed",
    SessionStatus.FAILED.value: "session_failed",
    SessionStatus.CANCELLED.value: "session_cancelled",
}

_shutting_down = threading.Event()
_streams: weakref.WeakSet[LiveStream] = weakref.WeakSet()


def shutting_down() -> bool:
    return _shutting_down.is_set()


def begin_shutdown() -> None:
    """Every handler closes with 1012 at once (gunicorn's SIGTERM calls this)."""
    _shutting_down.set()
    for stream in list(_streams):
        stream.wake()


class WakingEvent(threading.Event):
    """simple-websocket sets its connection's event when a message arrives or the client
    leaves. This one also wakes the handler, asleep on its event queue: a thousand idle
    connections then cost no CPU, instead of each polling twice a second."""

    def __init__(self):
        super().__init__()
        self.on_set = None

    def set(self) -> None:
        super().set()
        if self.on_set is not None:
            self.on_set()


def origin_allowed() -> bool:
    """Only this site's pages (and configured origins) may open a socket with our cookie."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: scripts authenticate with a token anyway
    allowed = {request.host_url.rstrip("/"), *current_app.config["OPTIDECK"]["cors"]["origins"]}
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" in allowed


def since_param() -> datetime | None:
    """`?since=` (ISO 8601): the client was up to date at that time, e.g. when the page was
    rendered or its last message arrived; the snapshot adds what changed after it."""
    raw = request.args.get("since", "").replace("Z", "+00:00")
    try:
        since = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return since if since.tzinfo else since.replace(tzinfo=UTC)


def refuse(ws, endpoint: str, reason: str) -> None:
    metrics.CONNECTIONS_REFUSED.labels(endpoint, reason).inc()
    log.debug("refused %s connection: %s", endpoint, reason)
    ws.close(POLICY_VIOLATION, reason)


def may_see(user: User, notification: Notification, rooms: set[int] | None) -> bool:
    """Alerts go to admins; session events to those who may see the session (and joined
    its room, if any); platform-wide events (no owner) to everyone."""
    if notification.admins_only:
        return user.role == Role.ADMIN
    session_id = notification.data.get("session_id")
    if rooms is not None and session_id is not None and session_id not in rooms:
        return False
    if notification.owner_id is None:
        return True
    return visibility.can_see(user, notification.owner_id)


def changed_sessions(user: User, since: datetime | None, active: bool = False):
    """Sessions this user may see that changed since `since` (and, with active, every
    queued or running one), oldest change first: what a reconnecting client missed."""
    query = optimization.query_for(user)
    condition = None
    if since is not None:
        condition = OptimizationSession.updated_at >= since
    if active:
        running = OptimizationSession.status.in_(
            (SessionStatus.QUEUED.value, SessionStatus.RUNNING.value))
        condition = running if condition is None else condition | running
    if condition is None:
        return []
    return list(db.session.scalars(query.where(condition).order_by(
        OptimizationSession.updated_at, OptimizationSession.id)))


def drain_latest(subscription, first: Notification) -> list[Notification]:
    """The next batch of events, keeping only the newest progress of each session:
    a slow client catches up on the state, not on every step it missed."""
    batch = [first]
    while True:
        more = subscription.get(timeout=0)
        if more is None:
            break
        batch.append(more)
    latest_progress = {}
    for index, item in enumerate(batch):
        if item.event == "session_progress":
            latest_progress[item.data.get("session_id")] = index
    return [item for index, item in enumerate(batch)
            if item.event != "session_progress"
            or latest_progress.get(item.data.get("session_id")) == index]


# Changes reach the database before their event is published, from one executor thread;
# another thread's change may land this much before an event published ahead of it.
WATERMARK_MARGIN = timedelta(seconds=2)


def _watermark(last: Notification) -> datetime:
    """Up to when this client has seen every change: a resync re-reads from here."""
    published = datetime.fromisoformat(last.timestamp.replace("Z", "+00:00"))
    return published - WATERMARK_MARGIN


class LiveStream(ABC):
    """One connection: a snapshot from the database, then live events, until the client
    leaves or the server stops. Subclasses say what each of those looks like on the wire."""

    endpoint = ""

    def __init__(self, ws, user: User, since: datetime | None):
        self.ws, self.user = ws, user
        self.since = since  # the last time this client was brought up to date
        self.wake = lambda: None
        self._sent = metrics.MESSAGES_SENT.labels(self.endpoint)

    def accepts(self, notification: Notification) -> bool:
        """Whether this client gets the event at all (called by the publisher)."""
        return may_see(self.user, notification, None)

    @abstractmethod
    def snapshot(self) -> list[str]:
        """The state from the database, as this endpoint's messages."""

    @abstractmethod
    def deliver(self, batch: list[Notification]) -> list[str]:
        """Live events, as this endpoint's messages."""

    def on_message(self, text: str) -> list[str]:
        return []  # browsers send nothing we act on

    def resync(self) -> list[str]:
        return self.snapshot()

    def _catch_up(self, messages) -> None:
        started = utcnow()
        self.send(messages)
        self.since = started

    def send(self, messages) -> None:
        """Send what messages() makes; a connection lives long, so it gives back the
        database connection it may have used at once."""
        try:
            made = messages()
        finally:
            db.session.remove()
        for message in made:
            self.ws.send(message)
        self._sent.inc(len(made))

    def run(self) -> None:
        metrics.CONNECTIONS.labels(self.endpoint).inc()
        metrics.CONNECTIONS_OPEN.labels(self.endpoint).inc()
        log.debug("%s connection opened for user %s", self.endpoint, self.user.id)
        try:
            with get("notifications").subscribe(self.accepts) as subscription:
                self.wake = subscription.wake
                if isinstance(self.ws.event, WakingEvent):
                    self.ws.event.on_set = subscription.wake
                _streams.add(self)
                self._catch_up(self.snapshot)
                self._loop(subscription)
        finally:
            metrics.CONNECTIONS_OPEN.labels(self.endpoint).dec()
            log.debug("%s connection closed for user %s", self.endpoint, self.user.id)

    def _loop(self, subscription) -> None:
        while not shutting_down():
            text = self.ws.receive(timeout=0)  # also how a closed client is noticed
            if text is not None:
                self.send(lambda: self.on_message(text))  # noqa: B023 - called at once
                continue
            first = subscription.get(timeout=IDLE_SECONDS)
            if subscription.dropped:
                # Fell behind and lost events: start again from the database.
                subscription.dropped = 0
                subscription.clear()  # older than the state about to be read
                metrics.RESYNCS.labels(self.endpoint).inc()
                log.debug("%s client of user %s resynced", self.endpoint, self.user.id)
                self._catch_up(self.resync)
                continue
            if first is not None:
                batch = drain_latest(subscription, first)
                self.send(lambda: self.deliver(batch))  # noqa: B023 - called at once
                self.since = _watermark(batch[-1])
        self.ws.close(SERVICE_RESTART, "server restarting")
