"""A server restart, as a deployment does it: clients are told (1012), come back, catch up."""

import http.client
import json
import time
import urllib.request

import pytest
from sqlalchemy import select

from tests.factories import gen_model, gen_session
from tests.live.wsclient import closed_within, open_socket, receive_json
from webapp.extensions import db
from webapp.tables import User
from webapp.testing import Server

PASSWORD = "restart-admin-password"


@pytest.fixture
def server(app, test_database_url, tmp_path):
    """`flask serve` (gunicorn) on this test's database."""
    folder = tmp_path / "server"
    folder.mkdir()
    server = Server(
        folder, {"OPTIDECK_DATABASE_URL": test_database_url, "OPTIDECK_ADMIN_PASSWORD": PASSWORD}
    ).start()
    yield server
    if server.process.poll() is None:
        server.stop()


def sign_in(server) -> dict:
    request = urllib.request.Request(  # noqa: S310 - localhost
        f"{server.url}/api/v1/auth/token",
        method="POST",
        data=json.dumps({"username": "admin", "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - localhost
        return {"Authorization": f"Bearer {json.load(response)['access_token']}"}


def test_a_restart_closes_with_1012_and_a_reconnect_catches_up(app, server):
    headers = sign_in(server)
    events = f"ws://127.0.0.1:{server.port}/api/v1/ws"
    ws = open_socket(events, headers)
    last = receive_json(ws)
    assert last["event"] == "system_status"

    seconds = server.stop()
    code, _, _ = closed_within(ws, 10)
    assert code == 1012  # the htmx ws extension reconnects after this code
    # The handlers closed at once: gunicorn did not wait out its 10 s graceful timeout.
    assert seconds < 9

    # While the server is down a session finishes (another web process, a worker).
    admin = db.session.scalar(select(User).where(User.username == "admin"))
    finished = gen_session(gen_model(admin), admin, status="completed")

    server.start()
    ws = open_socket(f"{events}?since={last['timestamp']}", headers)
    first, caught_up = receive_json(ws), receive_json(ws)
    assert first["event"] == "system_status"
    assert caught_up["event"] == "session_completed"
    assert caught_up["data"]["session_id"] == finished.id
    assert caught_up["data"]["size_reduction_percent"] == 50.0
    ws.close()


def test_a_keep_alive_connection_outlasts_a_pause_between_requests(server):
    """A browser or script pausing a few seconds between requests reuses its connection:
    gunicorn's own 2 s closed it under them, and a request racing the close was reset."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(2):
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("Connection", "").lower() != "close"
            time.sleep(3)  # longer than gunicorn's default keep-alive, within server.keepalive
        socket_before = connection.sock
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        assert connection.sock is socket_before  # the same connection, not a new one
    finally:
        connection.close()
