"""Both WebSocket endpoints, with real clients against a real (werkzeug) server."""

import json
import time

import pytest
from simple_websocket import ConnectionClosed

from tests.helpers import AuthActions
from tests.live.wsclient import (
    browser_socket,
    closed_within,
    connect,
    events_until_done,
    open_socket,
    receive_json,
    start_session,
    token_for,
)


def test_a_connection_starts_with_a_snapshot(app, live):
    _, token = token_for("alice")
    ws = connect(live, token)
    first = receive_json(ws)
    assert first["event"] == "system_status"
    assert {"busy", "capacity", "queued"} <= set(first["data"])
    assert first["timestamp"].endswith("Z")
    ws.close()


def test_a_token_in_the_first_message_also_works(app, live):
    _, token = token_for("alice")
    ws = connect(live)
    ws.send(json.dumps({"action": "auth", "token": token}))
    assert receive_json(ws)["event"] == "system_status"
    ws.close()


def test_a_bad_token_is_told_why_and_closed(app, live):
    ws = connect(live, "odk_not-a-real-token")
    error = receive_json(ws)
    assert error["event"] == "error" and error["data"]["error"] == "token_invalid"
    code, _, after = closed_within(ws)
    assert (code, after) == (1008, [])  # a policy violation, which clients do not retry


def test_a_foreign_origin_is_refused(app, live):
    _, token = token_for("alice")
    ws = connect(live, token, Origin="https://evil.example")
    with pytest.raises(ConnectionClosed):
        ws.receive(timeout=5)


def test_a_full_session_arrives_in_order_and_only_to_those_who_may_see_it(app, live, demo_files):
    _, alice_token = token_for("alice")
    _, bob_token = token_for("bob")
    _, admin_token = token_for("root", "admin")
    alice, bob, admin = (connect(live, t) for t in (alice_token, bob_token, admin_token))
    for ws in (alice, bob, admin):
        assert receive_json(ws)["event"] == "system_status"
    session_id = start_session(app, alice_token, demo_files)
    seen = events_until_done(alice, session_id)
    names = [e["event"] for e in seen]
    # Queued (announced as progress, so open lists show it), then taken by a worker.
    assert seen[0]["event"] == "session_progress" and seen[0]["data"]["status"] == "queued"
    assert names[1] == "session_started" and names[-1] == "session_completed"
    assert "session_progress" in names
    progress = [e["data"]["progress_percentage"] for e in seen]
    assert progress == sorted(progress)
    assert [e["event"] for e in events_until_done(admin, session_id)][-1] == "session_completed"
    # Bob may not see Alice's session: nothing of it reaches him.
    leaked = []
    while (message := bob.receive(timeout=1)) is not None:
        leaked.append(json.loads(message))
    assert all(m["data"].get("session_id") != session_id for m in leaked)
    for ws in (alice, bob, admin):
        ws.close()


def test_subscribe_narrows_to_chosen_sessions(app, live, demo_files):
    _, token = token_for("alice")
    ws = connect(live, token)
    receive_json(ws)
    ws.send(json.dumps({"action": "subscribe", "session_id": 999999}))
    time.sleep(0.5)
    hidden = start_session(app, token, demo_files)
    seen = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        message = ws.receive(timeout=0.5)
        if message is not None:
            seen.append(json.loads(message))
    assert all(m["data"].get("session_id") != hidden for m in seen)
    # Leaving the only room widens the stream to everything visible again.
    ws.send(json.dumps({"action": "unsubscribe", "session_id": 999999}))
    time.sleep(0.5)
    shown = start_session(app, token, demo_files)
    assert events_until_done(ws, shown)[-1]["event"] == "session_completed"
    ws.close()


def test_the_browser_socket_sends_the_session_pages_fragment(app, live, demo_files):
    user, token = token_for("carol")
    session_id = start_session(app, token, demo_files)
    browser = app.test_client()
    AuthActions(browser).login("carol")
    cookie = browser.get_cookie("session")
    ws = browser_socket(live, f"/ws?page=session&session={session_id}", cookie)
    first = ws.receive(timeout=10)
    assert '<div id="session-live" hx-swap-oob="true">' in first
    deadline = time.monotonic() + 120
    last = first
    while time.monotonic() < deadline and "Before and after" not in last:
        message = ws.receive(timeout=1)
        last = message or last
    assert "Before and after" in last
    ws.close()


def test_the_browser_socket_needs_a_login(app, live):
    ws = open_socket(f"ws://{live}/ws?page=other")
    with pytest.raises(ConnectionClosed):
        ws.receive(timeout=5)


def test_the_dashboard_follows_a_session_that_ends(app, live):
    """When a session fails, does an open dashboard get its cards, its recent list (with
    that session) and the new load, and its owner a toast?"""
    from tests.factories import gen_model, gen_session
    from webapp.services import session_runs
    from webapp.tables import utcnow

    user, _ = token_for("dave")
    session = gen_session(gen_model(user), user, status="running", heartbeat_at=utcnow())
    browser = app.test_client()
    AuthActions(browser).login("dave")
    ws = browser_socket(
        live, f"/ws?page=dashboard&since={utcnow().isoformat()}", browser.get_cookie("session")
    )
    status = ws.receive(timeout=10)  # the snapshot: nothing changed since, but the load
    assert 'id="system-status"' in status
    session_runs.record_failed(session.id, "engine_error", "out of memory")
    received = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "toast failed" not in received:
        received += ws.receive(timeout=1) or ""
    assert 'id="dashboard-live" hx-swap-oob="true"' in received
    assert 'id="recent-finished" hx-swap-oob="true"' in received
    assert f"#{session.id}</a>" in received.split('id="recent-finished"')[1]
    assert "toast failed" in received
    ws.close()
