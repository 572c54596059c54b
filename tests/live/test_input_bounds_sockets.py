"""WebSocket input that once crashed its handler: nested JSON, dates and ids past any range."""

import http.client
import json
from urllib.parse import urlencode

import pytest
from simple_websocket import ConnectionClosed

from tests.helpers import AuthActions, make_user
from tests.live.wsclient import browser_socket, connect, receive_json, token_for
from webapp.services import metrics

# Within the 64 KiB a message may have, and 30 times deeper than Python's recursion limit.
DEEP = "[" * 30_000 + "]" * 30_000


def test_a_deeply_nested_auth_message_is_answered(app, live):
    ws = connect(live)
    ws.send(DEEP)
    error = receive_json(ws)
    assert error["event"] == "error" and error["data"]["error"] == "token_missing"
    ws.close()


@pytest.mark.parametrize(
    "text",
    [
        DEEP,
        '{"action": "subscribe", "session_id": NaN}',
        '{"action": "subscribe", "session_id": ' + "9" * 5000 + "}",
    ],
    ids=["nested", "nan", "5000-digits"],
)
def test_an_unparsable_message_after_auth_is_answered_and_the_stream_stays(app, live, text):
    _, token = token_for("alice")
    ws = connect(live, token)
    assert receive_json(ws)["event"] == "system_status"
    ws.send(text)
    error = receive_json(ws)
    assert error["event"] == "error" and error["data"]["error"] == "validation_error"
    ws.send(json.dumps({"action": "subscribe", "session_id": 1}))
    ws.send("{")
    assert receive_json(ws)["event"] == "error"  # still listening
    ws.close()


def test_subscribe_takes_ids_in_range_and_a_bounded_number_of_sessions(app, live):
    """The hostile review's client subscribed to 100,000 ids (or ids of 4,000 digits): each
    copy of the growing set slowed every other client's events."""
    from webapp.live.scripts import MAX_ROOMS

    _, token = token_for("alice")
    ws = connect(live, token)
    assert receive_json(ws)["event"] == "system_status"
    for bad in (0, -5, 2**31):
        ws.send(json.dumps({"action": "subscribe", "session_id": bad}))
        answer = receive_json(ws)
        assert answer["data"]["error"] == "validation_error" and "from 1 to" in answer["data"]["message"]
    for session_id in range(1, MAX_ROOMS + 1):
        ws.send(json.dumps({"action": "subscribe", "session_id": session_id}))
    ws.send(json.dumps({"action": "subscribe", "session_id": MAX_ROOMS + 1}))
    answer = receive_json(ws)
    assert answer["event"] == "error" and f"at most {MAX_ROOMS} sessions" in answer["data"]["message"]
    # One already followed may be sent again; after an unsubscribe there is room for another.
    ws.send(json.dumps({"action": "subscribe", "session_id": 1}))
    ws.send(json.dumps({"action": "unsubscribe", "session_id": 2}))
    ws.send(json.dumps({"action": "subscribe", "session_id": MAX_ROOMS + 1}))
    ws.send("{")
    assert receive_json(ws)["data"]["message"] == "Messages are JSON objects."  # no refusal before it
    ws.close()


@pytest.mark.parametrize("since", ["1900-01-01", "9000-12-31T23:59:59-05:00", "2026-11-27T13:00:00Z"])
def test_any_since_in_range_gives_a_snapshot(app, live, since):
    _, token = token_for("alice")
    ws = connect(live, token, path=f"/api/v1/ws?since={since}")
    assert receive_json(ws)["event"] == "system_status"
    ws.close()


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "99999-01-01", "garbage"]
)
def test_a_bad_since_refuses_the_handshake(app, live, since):
    """Is a script told its `since` is wrong, instead of silently getting no catch-up?"""
    _, token = token_for("alice")
    host, port = live.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            "GET",
            f"/api/v1/ws?{urlencode({'since': since})}",
            headers={
                "Authorization": f"Bearer {token}",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 400
    assert body["error"] == "validation_error" and "since" in body["details"]


@pytest.mark.parametrize(
    "session", [str(2**64), "%C2%B2", "9" * 5000], ids=["past-bigint", "superscript-two", "5000-digits"]
)
def test_a_browser_socket_for_an_impossible_session_is_refused_not_crashed(app, live, session):
    make_user("alice")
    client = app.test_client()
    AuthActions(client).login("alice")
    refusals = metrics.CONNECTIONS_REFUSED.labels("browser", "no such session")
    before = refusals._value.get()
    ws = browser_socket(live, f"/ws?page=session&session={session}", client.get_cookie("session"))
    with pytest.raises(ConnectionClosed):
        ws.receive(timeout=5)
    assert refusals._value.get() == before + 1
