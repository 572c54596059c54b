"""What both WebSocket endpoints share: origin checks, caps, the send loop, the re-check
of their principal, shutdown."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import weakref
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import sqlalchemy.exc
from flask import current_app, request
from simple_websocket import ConnectionClosed
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError

from ..bounds import parse_datetime
from ..extensions import db, sock
from ..services import get, metrics, optimization, policy
from ..services.notifications import Notification
from ..tables import ACTIVE_STATUSES, OptimizationSession, SessionStatus, User, utcnow
from .admission import POLICY_VIOLATION, TRY_AGAIN_LATER, Refused
from .wire import ClientGone, Wire

log = logging.getLogger("optideck.live")

# The htmx ws extension reconnects only after 1006, 1012 and 1013: a server
# going away says 1012 ("service restart") so pages come back by themselves.
SERVICE_RESTART = 1012
# A handler sleeps until an event, a client message, the client leaving or a shutdown
# wakes it; this is only the longest it sleeps should a wake-up be missed.
IDLE_SECONDS = 5.0

# A write that fails because of the client: it left or stopped reading (ClientGone), or
# began closing while the handler wrote (wsproto refuses to send; simple-websocket says
# the connection is closed).
CLIENT_GONE = (ClientGone, LocalProtocolError, ConnectionClosed)

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
    try:
        return parse_datetime(request.args.get("since", ""))
    except ValueError:
        return None


def live_route(path: str, endpoint: str, waits_for_auth=lambda: False):
    """A WebSocket route whose sockets count against the [live] caps from the handshake
    on; its handler gets the socket's ticket, and raises Refused to close it at once.
    waits_for_auth() says whether this socket will authenticate by a message, later."""

    def decorate(handler):
        @functools.wraps(handler)
        def route(ws):
            # Every write to the socket goes through one bounded wire from the handshake on:
            # a stranger who floods pings and reads no pong must not hold the thread either.
            # A client that takes nothing for a ping interval is as gone as one that misses
            # a pong.
            wire = ws.sock = Wire(ws.sock, float(current_app.config["OPTIDECK"]["live"]["ping_seconds"]))
            try:
                if not origin_allowed():
                    raise Refused("origin not allowed")
                with get("admission").ticket(request.remote_addr, waits_for_auth()) as ticket:
                    handler(ws, ticket)
            except sqlalchemy.exc.TimeoutError:
                # Every database connection of this process stayed busy: it is overloaded.
                # 1013 sends browsers back later, as when the socket places are all taken.
                metrics.CONNECTIONS_REFUSED.labels(endpoint, "database busy").inc()
                log.warning("refused %s connection: database connection pool exhausted", endpoint)
                ws.close(TRY_AGAIN_LATER, "server busy, try again later")
            except Refused as refusal:
                metrics.CONNECTIONS_REFUSED.labels(endpoint, refusal.reason).inc()
                log.debug("refused %s connection: %s", endpoint, refusal.reason)
                with contextlib.suppress(*CLIENT_GONE):
                    ws.close(refusal.code, refusal.reason)
            except CLIENT_GONE as gone:
                # Not the server's failure: the client left, stalled, or its close crossed a
                # write (simple-websocket's reader had begun closing while this thread sent).
                log.info("%s client gone mid-write: %s", endpoint, gone or type(gone).__name__)
                wire.abort()

        sock.route(path)(route)

    return decorate


def may_see(rights: policy.Rights, notification: Notification, rooms: set[int] | None) -> bool:
    """Alerts go to admins; session events to those who may see the session (and joined
    its room, if any); platform-wide events (no owner) to everyone."""
    if notification.admins_only:
        return rights.administers
    session_id = notification.data.get("session_id")
    if rooms is not None and session_id is not None and session_id not in rooms:
        return False
    if notification.owner_id is None:
        return True
    return rights.can_see(notification.owner_id)


def changed_sessions(user: User, since: datetime | None, active: bool = False):
    """Sessions this user may see that changed since `since` (and, with active, every
    queued or running one), oldest change first: what a reconnecting client missed."""
    query = optimization.query_for(user)
    condition = None
    if since is not None:
        condition = OptimizationSession.updated_at >= since
    if active:
        running = OptimizationSession.status.in_(ACTIVE_STATUSES)
        condition = running if condition is None else condition | running
    if condition is None:
        return []
    return list(
        db.session.scalars(
            query.where(condition).order_by(OptimizationSession.updated_at, OptimizationSession.id)
        )
    )


def drain_latest(subscription, first: Notification) -> list[Notification]:
    """The next batch of events, keeping only the newest progress of each session:
    a slow client catches up on the state, not on every step it missed."""
    batch = [first]
    while True:
        more = subscription.get_nowait()
        if more is None:
            break
        batch.append(more)
    latest_progress = {}
    for index, item in enumerate(batch):
        if item.event == "session_progress":
            latest_progress[item.data.get("session_id")] = index
    return [
        item
        for index, item in enumerate(batch)
        if item.event != "session_progress" or latest_progress.get(item.data.get("session_id")) == index
    ]


# Changes reach the database before their event is published, from one executor thread;
# another thread's change may land this much before an event published ahead of it.
WATERMARK_MARGIN = timedelta(seconds=2)


def _watermark(last: Notification) -> datetime:
    """Up to when this client has seen every change: a resync re-reads from here."""
    return datetime.fromtimestamp(last.published, UTC) - WATERMARK_MARGIN


class LiveStream(ABC):
    """One connection: a snapshot from the database, then live events, until the client
    leaves or the server stops. Subclasses say what each of those looks like on the wire."""

    endpoint = ""
    token_id: int | None = None  # the bearer token a script's stream was opened with
    # Whether the fan-out may write an accepted event straight to the socket: when the
    # stream's message for an event is the event's own frame, whoever receives it.
    takes_frames = False

    def __init__(self, ws, user: User, since: datetime | None):
        self.ws, self.user = ws, user
        # Every write to the socket goes through the wire's lock (live_route's), the reader
        # thread's pings and closes too.
        self.wire: Wire = ws.sock
        # Every event is filtered for every socket: by plain values, not the ORM row's.
        self.rights = policy.Rights.of(user)
        self.user_id = user.id
        self._since = since
        self._last_written: Notification | None = None  # by the fan-out, after _since
        self.wake = lambda: None
        # Set from the access watch's thread; the handler acts on them at its next turn.
        self.ending: tuple[str, str] | None = None  # (error word, message) to close with
        self.renew_due = False  # the account's role changed: reload it, then resync
        self.subscription = None  # while it runs: its events
        self._sent = metrics.MESSAGES_SENT.labels(self.endpoint)

    @property
    def since(self) -> datetime | None:
        """Up to when this client has seen every change: a resync re-reads from here. The
        fan-out notes only the event it wrote last; the time is worked out when asked."""
        last = self._last_written
        if last is not None:
            self._since, self._last_written = _watermark(last), None
        return self._since

    @since.setter
    def since(self, value: datetime | None) -> None:
        self._since, self._last_written = value, None

    def accepts(self, notification: Notification) -> bool:
        """Whether this client gets the event at all (called by the publisher)."""
        return may_see(self.rights, notification, None)

    @abstractmethod
    def snapshot(self) -> list[str]:
        """The state from the database, as this endpoint's messages."""

    @abstractmethod
    def deliver(self, batch: list[Notification]) -> list[str]:
        """Live events, as this endpoint's messages."""

    @abstractmethod
    def farewell(self, error: str, message: str) -> list[str]:
        """What the client is told before its stream is ended for lost rights."""

    def on_message(self, text: str) -> list[str]:
        return []  # browsers send nothing we act on

    def resync(self, reason: str) -> list[str]:
        return self.snapshot()

    def review(self, account, token, now: datetime) -> None:
        """The access watch's call, with this stream's account (and token) as the database
        has them now: a deactivated account ends the stream, a new role narrows it."""
        if account is None or not account.active:
            self.end("token_invalid", "The account has been deactivated.")
        elif account.role != self.user.role:
            self.renew_due = True
            self.wake()

    def end(self, error: str, message: str) -> None:
        if self.ending is None:
            self.ending = (error, message)
            self.wake()

    def renew(self) -> list[str]:
        """The account afresh, so every later event is filtered by its new role; then the
        state as that role sees it."""
        self.user = db.session.get(User, self.user_id)
        self.rights = policy.Rights.of(self.user)
        log.info("%s stream of user %s follows its new role %s", self.endpoint, self.user_id, self.user.role)
        return self.resync(f"your role changed to {self.user.role}")

    def _catch_up(self, messages) -> None:
        started = utcnow()
        self.send(messages)
        self.since = started

    def send(self, messages) -> None:
        """Send what messages() makes, with nothing of the fan-out's in between (a
        snapshot's state, then the events after it); a connection lives long, so it gives
        back the database connection it may have used at once."""
        with self.wire.lock:
            try:
                made = messages()
            finally:
                db.session.remove()
            for message in made:
                self.ws.send(message)
        self._sent.inc(len(made))

    def send_now(self, notification: Notification) -> bool:
        """The fan-out's hand-off (its thread): the event's frame goes to the socket at
        once if nothing of this stream's is queued or being sent. False: queue it."""
        written = self.wire.write_now(notification.frame, self._may_write_now, notification)
        if written is False:
            return False
        if written is None:
            self.wake()  # the client took part of the frame: the handler sends the rest
        self._last_written = notification
        self._sent.inc()
        return True

    def _may_write_now(self, notification: Notification) -> bool:
        """Asked under the wire's lock: nothing queued would be overtaken, the stream is
        neither ending, changing rights, resyncing nor closed, and it still accepts the
        event (its rights may have been renewed since the publisher asked)."""
        subscription = self.subscription
        return (
            not subscription.pending()
            and not subscription.dropped
            and self.ending is None
            and not self.renew_due
            and not shutting_down()
            and self.ws.ws.state is ConnectionState.OPEN
            and self.accepts(notification)
        )

    def close(self, code: int, message: str) -> None:
        # Under the lock, so no event is written after the close frame.
        with self.wire.lock:
            self.ws.close(code, message)

    def run(self, ticket) -> None:
        ticket.claim(self.user_id)
        metrics.CONNECTIONS.labels(self.endpoint).inc()
        metrics.CONNECTIONS_OPEN.labels(self.endpoint).inc()
        log.debug("%s connection opened for user %s", self.endpoint, self.user_id)
        watch = get("access_watch")
        try:
            with get("notifications").subscribe(self.accepts) as subscription:
                self.subscription = subscription
                self.wake = subscription.wake
                if isinstance(self.ws.event, WakingEvent):
                    self.ws.event.on_set = subscription.wake
                _streams.add(self)
                watch.add(self)
                self._catch_up(self.snapshot)
                if self.takes_frames:
                    subscription.direct = self.send_now
                self._loop(subscription)
        finally:
            watch.discard(self)
            metrics.CONNECTIONS_OPEN.labels(self.endpoint).dec()
            log.debug("%s connection closed for user %s", self.endpoint, self.user_id)

    def _client_spoke(self) -> bool:
        """Whether a message or the client's leaving is waiting to be read: what
        receive(timeout=0) would find, asked without arming a timer (under gevent it arms
        one each call, and the loop asks after every batch it sends)."""
        ws = self.ws
        return bool(ws.input_buffer) or not ws.connected or ws.event.is_set()

    def _loop(self, subscription) -> None:
        while not shutting_down() and self.ending is None:
            if self.renew_due:
                with self.wire.lock:  # no event goes out while the rights change
                    self.renew_due = False
                    self._catch_up(self.renew)
                continue
            text = self.ws.receive(timeout=0) if self._client_spoke() else None
            if text is not None:
                self.send(lambda: self.on_message(text))  # noqa: B023 - called at once
                continue
            subscription.wait(IDLE_SECONDS)
            if self.ending is not None or self.renew_due:
                continue  # nothing more goes out under the rights the stream had
            if subscription.dropped:
                # Fell behind and lost events: start again from the database.
                with self.wire.lock:
                    subscription.dropped = 0
                    subscription.clear()  # older than the state about to be read
                    metrics.RESYNCS.labels(self.endpoint).inc()
                    log.debug("%s client of user %s resynced", self.endpoint, self.user_id)
                    self._catch_up(lambda: self.resync("the client fell behind"))
                continue
            self._send_queued(subscription)
        if self.ending is None:
            self.close(SERVICE_RESTART, "server restarting")
            return
        error, message = self.ending
        log.info("%s stream of user %s ended: %s", self.endpoint, self.user_id, message)
        with self.wire.lock:
            self.send(lambda: self.farewell(error, message))
            self.close(POLICY_VIOLATION, message)

    def _send_queued(self, subscription) -> None:
        """What the fan-out left unsent or queued (the socket was busy, or this stream
        makes its own messages), in order; under the lock, so no event overtakes it."""
        with self.wire.lock:
            self.wire.flush()
            first = subscription.get_nowait()
            if first is None:
                return
            batch = drain_latest(subscription, first)
            self.send(lambda: self.deliver(batch))
            self.since = _watermark(batch[-1])
