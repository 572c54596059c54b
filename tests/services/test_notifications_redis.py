"""The Redis fan-out of the NotificationService, on the real Redis (database 12, which no
other test uses; pub/sub channels are named after it, so other runs do not hear these)."""

import socket
import time

import pytest
import redis

from webapp.services import metrics
from webapp.services.notifications import (
    LISTENER_NAME,
    NotificationService,
    RedisNotificationService,
    for_config,
)

URL = "redis://127.0.0.1:6379/12"
# One database, flushed and cut off by these tests: under xdist they run one after another
# on one worker (the suite runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("redis-db-12")


@pytest.fixture
def services():
    redis.Redis.from_url(URL).flushdb()
    made = []

    def make(url=URL):
        service = RedisNotificationService(url, queue_size=10)
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop()


def kill_listeners(url=URL):
    """Cut this database's fan-out listeners off, as a Redis restart does, leaving the
    shared server and everyone else's connections alone."""
    admin = redis.Redis.from_url(url)
    db = str(admin.connection_pool.connection_kwargs["db"])
    killed = 0
    for client in admin.client_list(_type="pubsub"):
        if client["name"] == LISTENER_NAME and client["db"] == db:
            killed += admin.client_kill_filter(_id=client["id"])
    return killed


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_without_redis_the_bus_stays_in_process():
    service = for_config({"live": {"queue_size": 5}, "redis": {"url": ""}})
    assert type(service) is NotificationService


def test_with_redis_the_fan_out_is_chosen_by_config():
    service = for_config({"live": {"queue_size": 5}, "redis": {"url": URL}})
    assert isinstance(service, RedisNotificationService)
    assert service.channel == "optideck:notifications:12"


def test_an_event_published_in_one_process_reaches_the_subscribers_of_another(services):
    """Does a subscriber of process B get what process A publishes, filtered as locally?"""
    publisher, listener = services(), services()
    mine = listener.subscribe(lambda n: n.owner_id == 1)
    everything = listener.subscribe()
    assert listener.connected
    sent = publisher.publish("session_progress", {"session_id": 7, "progress_percentage": 40.0}, owner_id=2)
    publisher.publish("session_completed", {"session_id": 8}, owner_id=1)

    first, second = everything.get(timeout=5), everything.get(timeout=5)
    assert (first.event, first.data, first.owner_id) == ("session_progress", sent.data, 2)
    assert first.timestamp == sent.timestamp
    assert first.json == sent.json  # scripts receive the same bytes from either process
    assert second.event == "session_completed"
    got = mine.get(timeout=5)
    assert (got.event, got.data) == ("session_completed", {"session_id": 8})
    assert mine.get(timeout=0.2) is None  # owner 2's event never reached this queue


def test_a_full_queue_drops_and_counts_as_in_process(services):
    publisher, listener = services(), services()
    slow = listener.subscribe()
    dropped = metrics.EVENTS_DROPPED._value.get()
    for step in range(12):
        publisher.publish("session_progress", {"session_id": 1, "step": step}, owner_id=1)
    wait_for(lambda: slow.dropped == 2)
    assert metrics.EVENTS_DROPPED._value.get() - dropped >= 2


def test_publishing_with_redis_down_drops_the_event_quickly(services):
    """Does a request that changes a session still succeed, fast, while Redis is away?"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    service = services(f"redis://127.0.0.1:{port}/12")
    dropped = metrics.EVENTS_DROPPED._value.get()
    errors = metrics.FANOUT_PUBLISH_ERRORS._value.get()
    began = time.monotonic()
    notification = service.publish("session_cancelled", {"session_id": 3}, owner_id=1)
    assert time.monotonic() - began < 1.5
    assert notification.event == "session_cancelled"
    assert metrics.EVENTS_DROPPED._value.get() == dropped + 1
    assert metrics.FANOUT_PUBLISH_ERRORS._value.get() == errors + 1
    assert service.wait_connected(0.3) is False
    assert service.last_error == "ConnectionError"


def test_a_lost_listener_reconnects_and_every_subscriber_resyncs(services):
    """After Redis dropped the listener, is each subscriber told to read the state afresh,
    and do later events arrive again?"""
    publisher, listener = services(), services()
    first, second = listener.subscribe(), listener.subscribe(lambda n: False)
    reconnects = metrics.FANOUT_RECONNECTS._value.get()
    assert kill_listeners() >= 1
    wait_for(lambda: first.dropped and second.dropped)
    assert first.get(timeout=1) is None  # woken, so its handler resyncs at once
    wait_for(lambda: listener.connected)
    assert metrics.FANOUT_RECONNECTS._value.get() > reconnects

    publisher.publish("session_started", {"session_id": 5}, owner_id=1)
    event = first.get(timeout=5)
    while event is None:  # the wake-ups come first
        event = first.get(timeout=5)
    assert event.event == "session_started"


def test_a_malformed_message_is_ignored(services):
    listener = services()
    subscription = listener.subscribe()
    admin = redis.Redis.from_url(URL)
    admin.publish(listener.channel, b"\x80 not json")
    admin.publish(
        listener.channel,
        '{"event": "rm -rf", "data": {}, "owner_id": null, "admins_only": false, '
        '"timestamp": "2026-01-01T00:00:00Z"}',
    )
    services().publish("alert", {"kind": "x"}, admins_only=True)
    got = subscription.get(timeout=5)
    assert (got.event, got.admins_only, got.owner_id) == ("alert", True, None)
