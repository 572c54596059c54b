"""Open streams follow their principal: deactivation, revocation, expiry, logout and a
role change close or narrow an open /ws and /api/v1/ws within 5 s."""

import json
import time
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from tests.helpers import AuthActions, make_user
from tests.live.wsclient import browser_socket, closed_within, connect, receive_json, token_for
from webapp.extensions import db
from webapp.services import tokens, users
from webapp.tables import ApiToken, utcnow

POLICY_VIOLATION = 1008
WITHIN = 5.0


def api_stream(live, token):
    ws = connect(live, token)
    assert receive_json(ws)["event"] == "system_status"
    return ws


def browser_streams() -> float:
    return REGISTRY.get_sample_value("optideck_ws_connections_open", {"endpoint": "browser"}) or 0


def signed_in_browser(app, live, username):
    """A browser logged in as `username` with its page's /ws open."""
    browser = app.test_client()
    AuthActions(browser).login(username)
    before = browser_streams()
    ws = browser_socket(live, "/ws?page=other", browser.get_cookie("session"))
    # ?page=other sends nothing on connect: the counter says when the stream is running.
    deadline = time.monotonic() + 5
    while browser_streams() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return browser, ws


def error_of(messages):
    return [json.loads(m)["data"] for m in messages if json.loads(m)["event"] == "error"][-1]


def test_deactivation_closes_both_streams(app, live):
    """Does deactivating an account close its open script and browser streams?"""
    ada, token = token_for("ada")
    root = make_user("root", "admin")
    api_ws = api_stream(live, token)
    _, browser_ws = signed_in_browser(app, live, "ada")
    started = time.monotonic()
    users.set_active(ada, False, by=root)
    code, reason, seen = closed_within(api_ws)
    assert code == POLICY_VIOLATION and "deactivated" in reason
    assert error_of(seen)["error"] == "token_invalid"
    code, reason, seen = closed_within(browser_ws)
    assert code == POLICY_VIOLATION
    assert "has been deactivated" in "".join(seen)  # the page says why it is no longer live
    assert time.monotonic() - started < WITHIN


def test_revoking_the_token_closes_its_stream_only(app, live):
    ada, token = token_for("ada")
    other = tokens.create_personal(ada, "other", 1, False).access_token
    revoked_ws, kept_ws = api_stream(live, token), api_stream(live, other)
    response = app.test_client().delete("/api/v1/auth/token", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204
    code, reason, seen = closed_within(revoked_ws)
    assert code == POLICY_VIOLATION and "revoked" in reason
    assert error_of(seen)["error"] == "token_invalid"
    assert kept_ws.receive(timeout=1) is None and kept_ws.connected
    kept_ws.close()


def test_a_revocation_by_another_process_is_seen_by_the_periodic_check(app, live):
    """Another web process revokes the token: nothing wakes this one, its next check must."""
    ada, token = token_for("ada")
    ws = api_stream(live, token)
    db.session.execute(update(ApiToken).where(ApiToken.user_id == ada.id).values(revoked_at=utcnow()))
    db.session.commit()
    code, reason, _ = closed_within(ws)
    assert code == POLICY_VIOLATION and "revoked" in reason


def test_an_expiring_token_closes_its_stream(app, live):
    ada, token = token_for("ada")
    record = db.session.query(ApiToken).filter_by(user_id=ada.id).one()
    record.expires_at = utcnow() + timedelta(seconds=1)
    db.session.commit()
    ws = api_stream(live, token)
    code, reason, seen = closed_within(ws, 1 + WITHIN)
    assert code == POLICY_VIOLATION and "expired" in reason
    assert error_of(seen)["error"] == "token_expired"


def test_logout_elsewhere_closes_the_browser_stream(app, live):
    """Ada logs out on her laptop: does the page still open on her phone stop being live?"""
    make_user("ada")
    _, phone_ws = signed_in_browser(app, live, "ada")
    laptop = app.test_client()
    AuthActions(laptop).login("ada")
    AuthActions(laptop).logout()
    code, _, seen = closed_within(phone_ws)
    assert code == POLICY_VIOLATION
    assert "Your session has ended" in "".join(seen)


def test_a_cookie_saved_before_logout_cannot_open_the_socket(app, live):
    make_user("ada")
    browser = app.test_client()
    AuthActions(browser).login("ada")
    saved = browser.get_cookie("session")
    AuthActions(browser).logout()
    ws = browser_socket(live, "/ws?page=other", saved)
    code, reason, _ = closed_within(ws)
    assert (code, reason) == (POLICY_VIOLATION, "not signed in")


def test_a_role_change_closes_the_browser_stream(app, live):
    ada = make_user("ada", "admin")
    root = make_user("root", "admin")
    _, ws = signed_in_browser(app, live, "ada")
    users.set_role(ada, "operator", by=root)
    code, _, _ = closed_within(ws)
    assert code == POLICY_VIOLATION


def test_a_role_change_narrows_the_script_stream(app, live):
    """A demoted admin's script stays connected but gets only what an operator may see:
    no alerts, no other user's sessions."""
    ada, token = token_for("ada", "admin")
    root = make_user("root", "admin")
    bob = make_user("bob")
    ws = api_stream(live, token)
    bus = app.extensions["optideck.notifications"]
    bus.publish("session_started", {"session_id": 1}, owner_id=bob.id)
    assert receive_json(ws)["data"]["session_id"] == 1  # an admin sees Bob's session

    users.set_role(ada, "operator", by=root)
    resync = receive_json(ws, timeout=WITHIN)
    assert resync["event"] == "resync" and "operator" in resync["data"]["reason"]
    assert receive_json(ws)["event"] == "system_status"
    bus.publish("session_started", {"session_id": 2}, owner_id=bob.id)
    bus.publish("alert", {"kind": "test", "level": "warning", "message": "x"}, admins_only=True)
    bus.publish("session_started", {"session_id": 3}, owner_id=ada.id)
    assert receive_json(ws)["data"]["session_id"] == 3  # her own, and nothing before it
    assert ws.receive(timeout=1) is None
    ws.close()


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_a_stream_whose_principal_is_unchanged_stays_open(app, live, role):
    ada, token = token_for("ada", role)
    ws = api_stream(live, token)
    time.sleep(app.config["OPTIDECK"]["live"]["recheck_seconds"] * 2)
    assert ws.connected
    ws.close()
