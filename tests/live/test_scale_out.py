"""The scaled-out deployment end to end, on the real PostgreSQL: two gunicorn web processes
and one Celery worker on a Redis of this test's own (broker and fan-out), a script's
socket and a browser page on process B, sessions started through process A.

It kills the worker with SIGKILL mid-session and restarts Redis mid-stream, and checks
that nobody is left stale: the session ends worker_lost, and the clients resync.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.e2e.helpers import CHROMIUM, CHROMIUM_ARGS, log_in
from tests.helpers import PASSWORD
from tests.live.wsclient import (
    TERMINAL,
    events_until_done,
    next_event,
    open_socket,
    receive_json,
    token_for,
    upload_model,
)
from webapp.testing import Server, start_worker, stop_worker

pytestmark = pytest.mark.slow

HEARTBEAT_TIMEOUT = 10
# Long enough to be caught mid-run: a search measures many candidates, each for a second.
LONG = {"techniques": ["auto"], "budget_minutes": 2}


@pytest.fixture
def cluster(app, test_database_url, own_redis, tmp_path):
    """Web processes A and B and one Celery worker, all on this test's database, model
    store and Redis."""
    if not test_database_url.startswith("postgresql"):
        pytest.skip("the scaled-out deployment runs on PostgreSQL (the suite's PostgreSQL pass)")
    env = {
        "OPTIDECK_DATABASE_URL": test_database_url,
        "OPTIDECK_STORAGE_DIR": app.config["OPTIDECK"]["storage"]["dir"],
        "OPTIDECK_REDIS_URL": own_redis.url,
        "OPTIDECK_EXECUTOR_BACKEND": "celery",
        "OPTIDECK_EXECUTOR_POLL_SECONDS": "0.2",
        # Each measurement takes a second: the search runs long enough to be caught.
        "OPTIDECK_EXECUTOR_LATENCY_SECONDS": "1.0",
        "OPTIDECK_EXECUTOR_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
        "OPTIDECK_ADMIN_PASSWORD": "scale-admin-password",
    }
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(Server(tmp_path / name, env).start())
    worker = start_worker(servers[0].env, tmp_path / "worker")
    yield servers[0], servers[1], worker
    stop_worker(worker)
    for server in servers:
        server.stop()


def post(server, path, token, body=None):
    request = urllib.request.Request(  # noqa: S310 - localhost
        f"{server.url}/api/v1{path}",
        method="POST",
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - localhost
        return response.status, json.load(response)


def test_two_web_processes_one_worker_a_kill_and_a_redis_restart(app, cluster, own_redis, demo_files):
    first, second, worker = cluster
    alice, token = token_for("scale-alice")
    model_id = upload_model(app, token, demo_files)
    script = open_socket(f"ws://127.0.0.1:{second.port}/api/v1/ws", {"Authorization": f"Bearer {token}"})
    assert receive_json(script)["event"] == "system_status"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(base_url=second.url).new_page()
        page.set_default_timeout(20_000)
        log_in(page, alice.username, PASSWORD)
        page.goto("/sessions")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")

        # A session started through A: every event reaches B's socket and B's page.
        status, short = post(
            first, "/optimization/sessions", token, {"model_id": model_id, "techniques": ["quantization"]}
        )
        assert status == 202
        seen = events_until_done(script, short["session_id"])
        names = [event["event"] for event in seen]
        assert names[0] == "session_progress" and seen[0]["data"]["status"] == "queued"
        assert "session_started" in names and names[-1] == "session_completed"
        expect(page.locator(f"#session-{short['session_id']} .badge")).to_have_text(
            "completed", timeout=30_000
        )

        # A long one, followed on its own page on B.
        _, long = post(first, "/optimization/sessions", token, {"model_id": model_id, **LONG})
        session_id = long["session_id"]
        next_event(script, session_id, {"session_started"}, 60)
        page.goto(f"/sessions/{session_id}")
        expect(page.locator("#session-live .status-line .badge")).to_have_text("running")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")

        # Redis restarts mid-stream: the script is told to resync and gets the state afresh,
        # and the worker's later events reach B again.
        own_redis.stop()
        time.sleep(1)
        own_redis.start()
        deadline = time.monotonic() + 30
        while receive_json(script, timeout=30)["event"] != "resync":
            assert time.monotonic() < deadline, "no resync after the Redis restart"
        after = next_event(script, session_id, {"session_progress"}, 60)
        assert after["data"]["status"] == "running"
        assert worker.poll() is None, "the worker did not survive the Redis restart"

        # The worker dies mid-session (SIGKILL, its whole process group): with no worker
        # left, the web processes' sweep fails the session, and both clients see it.
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        killed = time.monotonic()
        ended = next_event(script, session_id, TERMINAL, 30 + HEARTBEAT_TIMEOUT)
        assert time.monotonic() - killed < 30
        assert ended["event"] == "session_failed"
        assert ended["data"]["error_type"] == "worker_lost"
        badge = page.locator("#session-live .status-line .badge")
        expect(badge).to_have_text("failed", timeout=10_000)
        expect(page.locator("#session-live")).to_contain_text("worker_lost")
        browser.close()
    script.close()
