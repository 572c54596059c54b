"""`server.worker_class = "gevent"`: the real server, a greenlet per connection.

Under gthread every open socket holds one of `server.threads`; here the server is given
four threads' worth of nothing (threads do not count under gevent) and still holds many
more sockets than that, runs a real session on its own executor and delivers every event
to each of them and, stopped, closes its sockets with 1012 (test_ws_contract runs its
checks of gunicorn's own refusals under both worker classes).
"""

import json
import urllib.request

import pytest

from tests.live.wsclient import (
    closed_within,
    events_until_done,
    open_socket,
    receive_json,
    token_for,
    upload_model,
)
from webapp.testing import Server

pytestmark = pytest.mark.slow

SOCKETS = 120


@pytest.fixture
def gevent_server(app, test_database_url, tmp_path):
    folder = tmp_path / "server"
    folder.mkdir()
    server = Server(
        folder,
        {
            "OPTIDECK_DATABASE_URL": test_database_url,
            "OPTIDECK_STORAGE_DIR": app.config["OPTIDECK"]["storage"]["dir"],
            "OPTIDECK_SERVER_WORKER_CLASS": "gevent",
            "OPTIDECK_SERVER_THREADS": "4",
            "OPTIDECK_SERVER_CONNECTIONS": "400",
            "OPTIDECK_LIVE_MAX_PER_USER": "0",
            "OPTIDECK_LIVE_MAX_PER_ADDRESS": "0",
        },
    ).start()
    yield server
    if server.process.poll() is None:
        server.stop()


def start(server, token, model_id) -> int:
    request = urllib.request.Request(  # noqa: S310 - localhost
        f"{server.url}/api/v1/optimization/sessions",
        method="POST",
        data=json.dumps({"model_id": model_id, "techniques": ["quantization"]}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - localhost
        assert response.status == 202
        return json.load(response)["session_id"]


def test_many_sockets_on_few_threads_all_get_a_real_sessions_events(app, gevent_server, demo_files):
    _, token = token_for("alice")
    model_id = upload_model(app, token, demo_files)
    url = f"ws://127.0.0.1:{gevent_server.port}/api/v1/ws"
    sockets = [open_socket(url, {"Authorization": f"Bearer {token}"}) for _ in range(SOCKETS)]
    for ws in sockets:
        assert receive_json(ws)["event"] == "system_status"

    # Pages and API calls are still served beside them.
    with urllib.request.urlopen(f"{gevent_server.url}/healthz", timeout=5) as response:  # noqa: S310
        assert response.status == 200
    session_id = start(gevent_server, token, model_id)
    for ws in sockets:
        seen = [event["event"] for event in events_until_done(ws, session_id)]
        assert seen[-1] == "session_completed"
        assert "session_started" in seen

    seconds = gevent_server.stop()
    for ws in sockets:
        assert closed_within(ws, 10)[0] == 1012
    assert seconds < 9  # the handlers closed at once, not after gunicorn's graceful timeout
