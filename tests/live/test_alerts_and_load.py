"""system_status when the load changes, and alerts for administrators only."""

import json
import time

import pytest
from prometheus_client import REGISTRY

from tests.factories import gen_model, gen_session
from tests.live.wsclient import connect, receive_json, serving, start_on, token_for, upload_model
from webapp.services import session_runs
from webapp.tables import utcnow

pytestmark = pytest.mark.slow  # every test serves the app, some run sessions


def messages_within(ws, seconds=3.0):
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = ws.receive(timeout=0.2)
        if message is not None:
            seen.append(json.loads(message))
    return seen


def wait_for(ws, predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    seen = []
    while time.monotonic() < deadline:
        message = ws.receive(timeout=0.2)
        if message is not None:
            seen.append(json.loads(message))
            if predicate(seen[-1]):
                return seen[-1]
    raise AssertionError(f"not seen in {seconds}s; got {[m['event'] for m in seen]}")


def test_a_failed_session_alerts_admins_and_only_admins(app, live):
    """Does an admin get an alert when Alice's session fails, and Alice only her event?"""
    alice, alice_token = token_for("alice")
    _, admin_token = token_for("root", "admin")
    _, viewer_token = token_for("vera", "viewer")
    alice_ws, admin_ws, viewer_ws = (connect(live, t) for t in (alice_token, admin_token, viewer_token))
    for ws in (alice_ws, admin_ws, viewer_ws):
        assert receive_json(ws)["event"] == "system_status"
    session = gen_session(gen_model(alice), alice, status="running", heartbeat_at=utcnow())
    session_runs.record_failed(session.id, "engine_error", "the model would not load")

    alert = wait_for(admin_ws, lambda m: m["event"] == "alert")
    assert alert["data"]["kind"] == "session_failed"
    assert alert["data"]["session_id"] == session.id
    assert "would not load" in alert["data"]["message"]
    alice_saw = messages_within(alice_ws)
    assert "session_failed" in [m["event"] for m in alice_saw]
    assert "alert" not in [m["event"] for m in alice_saw]
    assert "alert" not in [m["event"] for m in messages_within(viewer_ws, 1)]
    for ws in (alice_ws, admin_ws, viewer_ws):
        ws.close()


def test_the_api_error_rate_raises_and_clears_one_alert(make_app):
    """Do admins get one alert when the API's errors cross the threshold, and one when it
    falls back, however many requests come in between?"""
    app = make_app(
        alerts={
            "api_error_rate_threshold": 0.5,
            "api_error_min_requests": 4,
            "api_error_min_status": 400,
            "api_error_window_seconds": 60.0,
        }
    )
    with app.app_context(), serving(app) as address:
        _, admin_token = token_for("root", "admin")
        _, alice_token = token_for("alice")
        admin_ws, alice_ws = connect(address, admin_token), connect(address, alice_token)
        receive_json(admin_ws), receive_json(alice_ws)
        client = app.test_client()
        headers = {"Authorization": f"Bearer {alice_token}"}
        for _ in range(6):
            assert client.get("/api/v1/optimization/sessions?limit=1000", headers=headers).status_code == 400
        raised = wait_for(admin_ws, lambda m: m["event"] == "alert")
        assert raised["data"]["kind"] == "api_error_rate"
        assert raised["data"]["state"] == "raised" and raised["data"]["error_rate"] >= 0.5
        for _ in range(8):
            assert client.get("/api/v1/optimization/sessions", headers=headers).status_code == 200
        cleared = wait_for(admin_ws, lambda m: m["event"] == "alert")
        assert cleared["data"]["state"] == "cleared"
        assert [m for m in messages_within(admin_ws, 1) if m["event"] == "alert"] == []
        assert "alert" not in [m["event"] for m in messages_within(alice_ws, 1)]
        admin_ws.close(), alice_ws.close()


def test_system_status_follows_the_load(make_app, demo_files):
    """While one worker runs a session and another waits, and after both, does every
    connected user get the load as it is?"""
    app = make_app(executor={"max_workers": 1})
    with app.app_context(), serving(app) as address:
        _, alice_token = token_for("alice")
        _, bob_token = token_for("bob")
        ws = connect(address, bob_token)
        assert receive_json(ws)["data"] == {"busy": 0, "idle": 1, "capacity": 1, "queued": 0}
        model_id = upload_model(app, alice_token, demo_files)
        start_on(app, alice_token, model_id), start_on(app, alice_token, model_id)

        def load(busy, queued):
            return lambda m: (
                m["event"] == "system_status" and (m["data"]["busy"], m["data"]["queued"]) == (busy, queued)
            )

        wait_for(ws, load(busy=1, queued=1), seconds=30)
        wait_for(ws, load(busy=0, queued=0), seconds=120)
        ws.close()


def test_connections_and_messages_are_counted(app, live):
    """Do the Prometheus-style counters follow connections as they open and close?"""

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, {"endpoint": "api", **labels}) or 0.0

    _, token = token_for("alice")
    opened, sent = sample("optideck_ws_connections_total"), sample("optideck_ws_messages_sent_total")
    open_now = sample("optideck_ws_connections_open")
    ws = connect(live, token)
    receive_json(ws)
    assert sample("optideck_ws_connections_total") == opened + 1
    assert sample("optideck_ws_connections_open") == open_now + 1
    # The server counts a message once its send returns, which may be after it arrived.
    deadline = time.monotonic() + 5
    while sample("optideck_ws_messages_sent_total") < sent + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sample("optideck_ws_messages_sent_total") >= sent + 1
    ws.close()
    deadline = time.monotonic() + 5
    while sample("optideck_ws_connections_open") != open_now and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sample("optideck_ws_connections_open") == open_now
