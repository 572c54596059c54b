"""With Redis, the API's error rate is counted over every web process, and its alert is
raised once and cleared once, not once per process (two app instances stand for two
gunicorn workers; database 9 of the real Redis is theirs)."""

import time

import pytest
import redis

from webapp.services.alerts import SharedErrorRateMonitor

URL = "redis://127.0.0.1:6379/9"
pytestmark = pytest.mark.xdist_group("redis-db-9")

ALERTS = {
    "api_error_rate_threshold": 0.5,
    "api_error_min_requests": 4,
    "api_error_min_status": 400,
    "api_error_window_seconds": 60.0,
}


def alerts_seen(subscription, seconds: float = 2.0) -> list[str]:
    """The alerts' states that arrive within `seconds`."""
    seen = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        notification = subscription.get(timeout=left)
        if notification is not None and notification.event == "alert":
            seen.append(notification.data["state"])
    return seen


def test_two_processes_share_one_window_and_one_alert(make_app):
    redis.Redis.from_url(URL).flushdb()
    first, second = (make_app(redis={"url": URL}, alerts=ALERTS) for _ in range(2))
    assert isinstance(first.extensions["optideck.error_rate"], SharedErrorRateMonitor)
    # Alerts travel through Redis: subscribe once the listener is (its first connection
    # resyncs whoever subscribed before it).
    assert first.extensions["optideck.notifications"].wait_connected(10)
    listening = first.extensions["optideck.notifications"].subscribe()
    clients = [first.test_client(), second.test_client()]
    # Three errors in each process: neither alone has crossed min_requests twice over,
    # together they are 6 errors of 6 responses.
    for turn in range(6):
        assert clients[turn % 2].get("/api/v1/models").status_code == 401
    assert alerts_seen(listening) == ["raised"]
    for turn in range(14):  # 6 of 20 responses are errors now: below the threshold
        assert clients[turn % 2].get("/api/v1/openapi.json").status_code == 200
    assert alerts_seen(listening) == ["cleared"]


def test_redis_away_costs_the_count_not_the_request(make_app):
    app = make_app(redis={"url": "redis://127.0.0.1:1/0"}, alerts=ALERTS)
    client = app.test_client()
    for _ in range(5):
        assert client.get("/api/v1/models").status_code == 401


def test_an_idle_process_sends_its_counts_within_a_second(make_app):
    """Healthy responses are sent in batches; a process that then goes quiet still adds
    them to the shared window, or another process's errors would be judged without them."""
    client = redis.Redis.from_url(URL)
    client.flushdb()
    app = make_app(redis={"url": URL}, alerts=ALERTS)
    for _ in range(5):
        assert app.test_client().get("/api/v1/openapi.json").status_code == 200

    def counted() -> int:
        return sum(
            int(client.hget(key, "requests") or 0) for key in client.keys(f"{SharedErrorRateMonitor.KEY}:1*")
        )

    deadline = time.monotonic() + 3
    while counted() < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counted() == 5


def test_a_process_leaving_sends_what_it_still_held(make_app):
    """A worker that exits right after its responses (a restart, a scale-down) must not
    take its last second's counts with it."""
    from webapp.services import alerts

    client = redis.Redis.from_url(URL)
    client.flushdb()
    app = make_app(redis={"url": URL}, alerts=ALERTS)
    monitor = app.extensions["optideck.error_rate"]
    with app.app_context():
        for _ in range(3):
            monitor.record(200)
    alerts.send_at_exit(app)  # what wsgi.py registers with atexit
    counted = sum(
        int(client.hget(key, "requests") or 0) for key in client.keys(f"{SharedErrorRateMonitor.KEY}:1*")
    )
    assert counted == 3
