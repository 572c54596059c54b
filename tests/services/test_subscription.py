"""A subscriber's queue: events in order, wake-ups, the bound, and the direct hand-off."""

import threading
import time

from webapp.services.notifications import NotificationService


def test_events_come_in_order_and_a_read_event_does_not_wake_the_next_get():
    bus = NotificationService(queue_size=10)
    subscription = bus.subscribe()
    bus.publish("session_started", {"session_id": 1})
    assert subscription.get(timeout=1).data == {"session_id": 1}
    later = threading.Timer(0.3, lambda: bus.publish("session_started", {"session_id": 2}))
    later.start()
    began = time.monotonic()
    # The first event's signal is still queued: get() must wait for the second event, not
    # return None at once.
    assert subscription.get(timeout=5).data == {"session_id": 2}
    assert time.monotonic() - began >= 0.2
    later.join()


def test_wake_ends_a_get_with_none():
    subscription = NotificationService().subscribe()
    threading.Timer(0.1, subscription.wake).start()
    began = time.monotonic()
    assert subscription.get(timeout=5) is None
    assert time.monotonic() - began < 2


def test_a_full_queue_drops_and_counts():
    bus = NotificationService(queue_size=3)
    subscription = bus.subscribe()
    for number in range(5):
        bus.publish("session_progress", {"session_id": number})
    assert subscription.dropped == 2
    assert [subscription.get_nowait().data["session_id"] for _ in range(3)] == [0, 1, 2]
    assert subscription.get_nowait() is None


def test_a_direct_hand_off_queues_nothing_and_a_refused_one_queues():
    bus = NotificationService()
    subscription = bus.subscribe(lambda n: n.data["session_id"] != 3)
    taken, willing = [], True

    def direct(notification):
        if willing:
            taken.append(notification.data["session_id"])
        return willing

    subscription.direct = direct
    bus.publish("session_started", {"session_id": 1})
    bus.publish("session_started", {"session_id": 3})  # not accepted: not offered either
    assert taken == [1]
    assert not subscription.pending()
    willing = False
    bus.publish("session_started", {"session_id": 2})
    assert subscription.pending()
    assert subscription.get_nowait().data == {"session_id": 2}


def test_each_hand_off_is_timed_from_the_publish():
    """optideck_event_delivery_seconds: from the event's own timestamp (another process's
    publish, over Redis) to this process having handed it to every subscriber."""
    from datetime import UTC, datetime, timedelta

    from prometheus_client import REGISTRY

    from webapp.services.notifications import Notification

    def bucket(le):
        return REGISTRY.get_sample_value("optideck_event_delivery_seconds_bucket", {"le": le}) or 0

    bus = NotificationService()
    bus.subscribe()
    fast, slow = bucket("0.2"), bucket("5.0")
    bus.publish("session_started", {"session_id": 1})
    assert bucket("0.2") == fast + 1
    three_seconds_ago = (datetime.now(UTC) - timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
    bus._deliver(Notification("session_started", {"session_id": 2}, None, timestamp=three_seconds_ago))
    assert bucket("0.2") == fast + 1 and bucket("2.5") < bucket("5.0") == slow + 2
