"""Publish and subscribe of platform events (the README's "Live events" names them).

The in-process backend serves the embedded default: one web process. Each
subscriber has its own bounded queue, so a slow one never holds up publish.
With Redis configured, RedisNotificationService carries every event through a
Redis channel, so a client of any web process hears what any process publishes.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from wsproto.frame_protocol import FrameProtocol

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

    @cached_property
    def published(self) -> float:
        """When it was published, in seconds since the epoch."""
        return datetime.fromisoformat(self.timestamp.replace("Z", "+00:00")).timestamp()

    @cached_property
    def frame(self) -> bytes:
        """`json` as one server-to-client WebSocket text frame, for the live streams that
        write it to many sockets: framed once, not once per socket."""
        return bytes(FrameProtocol(client=False, extensions=[]).send_data(self.json, fin=True))


class Subscription:
    """One subscriber's events: a bounded queue it drains, or, where the subscriber
    offers one, a `direct` hand-off the publisher tries first."""

    def __init__(
        self, service: NotificationService, size: int, accepts: Callable[[Notification], bool] | None
    ):
        self._service = service
        self.accepts = accepts
        self.size = size
        # Called by the publisher, before queuing: True when the subscriber took the event
        # at once (a script's stream writes it to its socket), so nothing is queued or woken.
        self.direct: Callable[[Notification], bool] | None = None
        # Events wait in a deque (append and popleft are atomic); a waiting reader sleeps on
        # the signals, one per event or wake(). SimpleQueue is C all the way: with a
        # thousand subscribers, queue.Queue's Python Condition made each publish a storm of
        # GIL hand-offs.
        self._events: deque[Notification] = deque()
        self._signals: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.dropped = 0

    def put(self, notification: Notification) -> bool:
        """Hand the event over or queue it, unless the subscriber is this far behind (then
        it must resync)."""
        if self.direct is not None and self.direct(notification):
            return True
        if len(self._events) >= self.size:
            self.dropped += 1
            return False
        self._events.append(notification)
        self._signals.put(True)
        return True

    def pending(self) -> bool:
        """Whether an event is queued (a direct hand-off must not overtake it)."""
        return bool(self._events)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until an event is queued or wake() is called, at most timeout seconds;
        what it woke for is then read with get_nowait(). True if wake() was called."""
        try:
            signals = [self._signals.get(timeout=timeout)]
        except queue.Empty:
            return False
        # The events behind these signals are read next; a signal for an event queued after
        # this wakes the next wait() (at worst to find the event already read).
        while True:
            try:
                signals.append(self._signals.get(block=False))
            except queue.Empty:
                return False in signals

    def get(self, timeout: float | None = None) -> Notification | None:
        """The next event; None after the timeout or a wake()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if self.wait(left):
                return self.get_nowait()

    def get_nowait(self) -> Notification | None:
        """The next event if one is queued, else None."""
        try:
            return self._events.popleft()
        except IndexError:
            return None

    def clear(self) -> None:
        """Forget what is queued (the subscriber is about to read the state afresh)."""
        self._events.clear()

    def wake(self) -> None:
        """Make a waiting get() or wait() return now (something other than an event happened)."""
        self._signals.put(False)

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
        self._send(notification)
        return notification

    def _send(self, notification: Notification) -> None:
        self._deliver(notification)
        metrics.EVENTS_PUBLISHED.labels(notification.event).inc()

    def _deliver(self, notification: Notification) -> None:
        """Queue the event for every local subscriber that accepts it."""
        with self._lock:
            subscribers = list(self._subscribers)
        delivered = 0
        for subscription in subscribers:
            if subscription.accepts is not None and not subscription.accepts(notification):
                continue
            delivered += 1
            if not subscription.put(notification):
                metrics.EVENTS_DROPPED.inc()
        metrics.EVENT_DELIVERY_SECONDS.observe(max(0.0, time.time() - notification.published))
        log.debug(
            "delivered %s owner=%s admins_only=%s to %d of %d subscribers",
            notification.event,
            notification.owner_id,
            notification.admins_only,
            delivered,
            len(subscribers),
        )

    def resync_all(self) -> None:
        """Events may have been lost for everyone: each subscriber reads the state afresh,
        as one whose queue overflowed does."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.dropped += 1
            subscription.wake()


# A publish runs inside a request or the executor's thread: with Redis away it must give
# up at once (the database stays the truth), not after redis-py's default retries.
PUBLISH_TIMEOUT_SECONDS = 0.5
# The listener's reconnect delays: doubling from the first, jittered, capped.
BACKOFF_FIRST_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0
# How long the listener waits on its socket before it looks at its stop flag again.
POLL_SECONDS = 1.0
LISTENER_NAME = "optideck-fanout"


def channel_for(url: str) -> str:
    """Redis pub/sub ignores the database number: one server's subscribers of a channel
    hear every database's publishers. Deployments (and test runs) kept apart by their
    database number stay apart by naming the channel after it."""
    db = redis.connection.parse_url(url).get("db", 0)
    return f"optideck:notifications:{db}"


class RedisNotificationService(NotificationService):
    """Several processes: publish() goes to a Redis channel, and one listener thread per
    process hands each event to this process's subscribers, as the in-process bus does.

    The listener starts with the first subscriber (or readiness check), so a process that
    only publishes runs no thread. After it lost Redis it reconnects with backoff, then
    tells every subscriber to resync: what was published meanwhile is gone.
    """

    def __init__(self, url: str, queue_size: int = 1000):
        super().__init__(queue_size)
        self.url = url
        self.channel = channel_for(url)
        no_retry = Retry(NoBackoff(), 0)
        self._publisher = redis.Redis.from_url(
            url,
            socket_timeout=PUBLISH_TIMEOUT_SECONDS,
            socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1),  # once more on a fresh connection after a restart
        )
        self._listener_client = redis.Redis.from_url(
            url,
            socket_connect_timeout=2,
            socket_keepalive=True,
            health_check_interval=10,
            client_name=LISTENER_NAME,
            retry=no_retry,  # the listener notices a lost connection and resyncs
        )
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None  # why the listener is not connected, if known
        self._ever_connected = False

    def subscribe(self, accepts: Callable[[Notification], bool] | None = None) -> Subscription:
        # While the listener is not subscribed (the first subscriber, an outage) wait
        # briefly for it, so the subscriber's snapshot is not older than the channel.
        self.wait_connected(PUBLISH_TIMEOUT_SECONDS)
        return super().subscribe(accepts)

    def _send(self, notification: Notification) -> None:
        message = json.dumps(
            {
                "event": notification.event,
                "data": notification.data,
                "owner_id": notification.owner_id,
                "admins_only": notification.admins_only,
                "timestamp": notification.timestamp,
            },
            default=str,
        )
        try:
            self._publisher.publish(self.channel, message)
        except (redis.RedisError, OSError) as exc:
            # The change is in the database; subscribers resync when the fan-out is back.
            metrics.EVENTS_DROPPED.inc()
            metrics.FANOUT_PUBLISH_ERRORS.inc()
            log.warning("could not publish %s to Redis (%s); the event is dropped", notification.event, exc)
            return
        metrics.EVENTS_PUBLISHED.labels(notification.event).inc()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Whether the listener is subscribed, starting it if need be and waiting up to
        timeout for it."""
        self.start()
        return self._connected.wait(timeout)

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._stopping.clear()
                self._thread = threading.Thread(target=self._listen, name=LISTENER_NAME, daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the listener (tests, shutdown); a later subscribe() starts it again."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            thread.join(timeout)
        self._connected.clear()
        self._publisher.close()

    def _listen(self) -> None:
        delay = BACKOFF_FIRST_SECONDS
        while not self._stopping.is_set():
            pubsub = self._listener_client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=POLL_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._on_subscribed()
                        delay = BACKOFF_FIRST_SECONDS
                    elif message["type"] == "message":
                        self._receive(message["data"])
            except (redis.RedisError, OSError) as exc:
                # One warning per outage; its retries, every few seconds, at DEBUG.
                first_failure = self.last_error is None
                self.last_error = type(exc).__name__
                (log.warning if first_failure else log.debug)(
                    "Redis fan-out not subscribed (%s); retrying with backoff", exc
                )
            finally:
                self._connected.clear()
                pubsub.close()
            self._stopping.wait(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter only
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    def _on_subscribed(self) -> None:
        # Whatever was published while the listener was away is lost: those who subscribed
        # before now start again from the database. Done before `connected` is told, so one
        # who subscribes from here on (and reads its state after) is not resynced for nothing.
        self.resync_all()
        if self._ever_connected:
            metrics.FANOUT_RECONNECTS.inc()
        self._ever_connected = True
        self.last_error = None
        self._connected.set()
        log.info("fan-out subscribed to %s", self.channel)

    def _receive(self, raw: bytes) -> None:
        try:
            fields = json.loads(raw)
            notification = Notification(
                fields["event"],
                fields["data"],
                fields["owner_id"],
                bool(fields["admins_only"]),
                fields["timestamp"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed message on %s: %s", self.channel, exc)
            return
        if notification.event not in EVENTS or not isinstance(notification.data, dict):
            log.warning("ignored an unknown event on %s: %r", self.channel, notification.event)
            return
        self._deliver(notification)


def for_config(config: dict) -> NotificationService:
    """The in-process bus, or the Redis fan-out when redis.url is set."""
    queue_size = config["live"]["queue_size"]
    url = config["redis"]["url"]
    return RedisNotificationService(url, queue_size) if url else NotificationService(queue_size)
