"""Live events across web processes through Redis: real gunicorn servers, real Redis.

The shared Redis is used on database 11 (no other test uses it; the fan-out's channel is
named after it). The restart test runs a Redis of its own, so stopping it touches nobody.
"""

import json
import time
import urllib.error
import urllib.request

import pytest
import redis

from tests.factories import gen_model, gen_session
from tests.live.wsclient import events_until_done, open_socket, receive_json, token_for, upload_model
from webapp.extensions import db
from webapp.services import metrics, session_summaries
from webapp.services.notifications import RedisNotificationService
from webapp.testing import Server

# Both flush or restart Redis state of their own: one worker runs them, one after another.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("redis-fanout")]

SHARED_URL = "redis://127.0.0.1:6379/11"


@pytest.fixture
def start_server(app, test_database_url, tmp_path):
    """`flask serve` (gunicorn) on this test's database and model store, with Redis."""
    servers = []

    def start(name, redis_url):
        folder = tmp_path / name
        folder.mkdir()
        env = {
            "OPTIDECK_DATABASE_URL": test_database_url,
            "OPTIDECK_STORAGE_DIR": app.config["OPTIDECK"]["storage"]["dir"],
            "OPTIDECK_REDIS_URL": redis_url,
            "OPTIDECK_ADMIN_PASSWORD": "fanout-admin-password",
        }
        servers.append(Server(folder, env).start())
        return servers[-1]

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop()


def post(server, path, token, body):
    request = urllib.request.Request(  # noqa: S310 - localhost
        f"{server.url}{path}",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - localhost
        return response.status, json.load(response)


def readiness(server) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{server.url}/readyz", timeout=10) as response:  # noqa: S310
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def wait_readiness(server, ready: bool, seconds=20.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status, body = readiness(server)
        if (status == 200) == ready:
            return body
        assert time.monotonic() < deadline, f"/readyz still {status}: {body}"
        time.sleep(0.2)


def test_a_session_started_on_one_process_streams_to_a_socket_on_another(app, start_server, demo_files):
    """Does a script connected to process B see, live, a session that process A queued,
    and only if it may see that session?"""
    redis.Redis.from_url(SHARED_URL).flushdb()
    _, alice_token = token_for("alice")
    _, bob_token = token_for("bob")
    _, admin_token = token_for("root", "admin")
    model_id = upload_model(app, alice_token, demo_files)
    first, second = start_server("a", SHARED_URL), start_server("b", SHARED_URL)
    assert readiness(second)[1]["checks"]["fanout"] == {
        "ok": True,
        "detail": "subscribed to optideck:notifications:11",
    }

    sockets = [
        open_socket(f"ws://127.0.0.1:{second.port}/api/v1/ws", {"Authorization": f"Bearer {t}"})
        for t in (alice_token, bob_token, admin_token)
    ]
    alice, bob, admin = sockets
    for ws in sockets:
        assert receive_json(ws)["event"] == "system_status"

    status, session = post(
        first,
        "/api/v1/optimization/sessions",
        alice_token,
        {"model_id": model_id, "techniques": ["pruning", "quantization"]},
    )
    assert status == 202
    seen = events_until_done(alice, session["session_id"])
    # The queued announcement is published by process A's request: only Redis brings it here.
    assert seen[0]["event"] == "session_progress" and seen[0]["data"]["status"] == "queued"
    assert [e["event"] for e in seen][-1] == "session_completed"
    assert "session_started" in [e["event"] for e in seen]
    assert [e["event"] for e in events_until_done(admin, session["session_id"])][-1] == "session_completed"
    leaked = []
    while (message := bob.receive(timeout=1)) is not None:
        leaked.append(json.loads(message))
    assert all(m["data"].get("session_id") != session["session_id"] for m in leaked)
    for ws in sockets:
        ws.close()


def test_a_redis_restart_resyncs_the_clients_and_readyz_follows_it(app, start_server, own_redis):
    """When Redis goes away mid-stream, does /readyz say so, is the client sent the state
    afresh once it is back, and do later events arrive again?"""
    server = start_server("b", own_redis.url)
    assert wait_readiness(server, ready=True)["checks"]["fanout"]["ok"]
    alice, alice_token = token_for("alice")
    running = gen_session(gen_model(alice), alice, status="running")
    running.progress = 10.0
    db.session.commit()
    # Another process: it publishes as a worker or web process would, through Redis.
    publisher = RedisNotificationService(own_redis.url)

    ws = open_socket(f"ws://127.0.0.1:{server.port}/api/v1/ws", {"Authorization": f"Bearer {alice_token}"})
    assert receive_json(ws)["event"] == "system_status"
    assert receive_json(ws)["data"]["session_id"] == running.id  # the snapshot
    running.progress = 20.0
    db.session.commit()
    publisher.publish(
        "session_progress", session_summaries.jsonable(session_summaries.summary(running)), alice.id
    )
    assert receive_json(ws)["data"]["progress_percentage"] == 20.0

    own_redis.stop()
    down = wait_readiness(server, ready=False)
    assert down["checks"]["fanout"]["ok"] is False
    # Meanwhile the session moves on; its event cannot be carried, but publish still returns.
    running.progress = 60.0
    db.session.commit()
    dropped = metrics.EVENTS_DROPPED._value.get()
    publisher.publish(
        "session_progress", session_summaries.jsonable(session_summaries.summary(running)), alice.id
    )
    assert metrics.EVENTS_DROPPED._value.get() == dropped + 1

    own_redis.start()
    assert wait_readiness(server, ready=True)["checks"]["fanout"]["ok"]
    resync = receive_json(ws, timeout=20)
    assert resync["event"] == "resync"
    caught_up = receive_json(ws)
    while caught_up["event"] == "system_status":
        caught_up = receive_json(ws)
    assert caught_up["data"]["session_id"] == running.id
    assert caught_up["data"]["progress_percentage"] == 60.0  # read afresh from the database

    running.status, running.progress = "completed", 100.0
    db.session.commit()
    publisher.publish(
        "session_completed", session_summaries.jsonable(session_summaries.summary(running)), alice.id
    )
    message = receive_json(ws)
    assert (message["event"], message["data"]["session_id"]) == ("session_completed", running.id)
    publisher.stop()
    ws.close()
