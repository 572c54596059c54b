"""Sessions run by Celery workers: a real gunicorn server, real `flask worker` processes,
real Redis (database 10, flushed; no other test uses it) as the broker.

The web server is built with executor.backend = "celery": it must queue, never run.
"""

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import redis

from tests.live.wsclient import token_for, upload_model
from webapp.testing import Server, start_worker, stop_worker

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("celery")]

REDIS_URL = "redis://127.0.0.1:6379/10"
FINISHED = {"completed", "failed", "cancelled"}
# Long enough to be caught mid-run: a search measures many candidates.
LONG = {"techniques": ["auto"], "budget_minutes": 1}


@pytest.fixture
def queue(app, test_database_url, tmp_path):
    """A Celery-configured server of this test's database and model store, and its workers."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {
        "OPTIDECK_DATABASE_URL": test_database_url,
        "OPTIDECK_STORAGE_DIR": app.config["OPTIDECK"]["storage"]["dir"],
        "OPTIDECK_REDIS_URL": REDIS_URL,
        "OPTIDECK_EXECUTOR_BACKEND": "celery",
        "OPTIDECK_EXECUTOR_POLL_SECONDS": "0.2",
        "OPTIDECK_EXECUTOR_LATENCY_SECONDS": "0.2",
        "OPTIDECK_EXECUTOR_HEARTBEAT_TIMEOUT_SECONDS": "10",
        "OPTIDECK_ADMIN_PASSWORD": "celery-admin-password",
    }

    class Queue:
        workers: list[subprocess.Popen] = []

        def __init__(self):
            folder = tmp_path / "web"
            folder.mkdir()
            self.server = Server(folder, env).start()

        def start_worker(self) -> float:
            """A `flask worker` of its own process group; the time it was ready."""
            self.workers.append(start_worker(self.server.env, tmp_path / f"worker{len(self.workers)}"))
            return time.monotonic()

        def call(self, method, path, token, body=None):
            request = urllib.request.Request(  # noqa: S310 - localhost
                f"{self.server.url}/api/v1{path}",
                method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - localhost
                return response.status, json.load(response)

        def session(self, token, session_id):
            return self.call("GET", f"/optimization/sessions/{session_id}", token)[1]

        def wait_for(self, token, session_id, statuses=FINISHED, seconds=60.0):
            deadline = time.monotonic() + seconds
            while True:
                session = self.session(token, session_id)
                if session["status"] in statuses:
                    return session
                assert time.monotonic() < deadline, f"session still {session['status']}"
                time.sleep(0.1)

    queue = Queue()
    yield queue
    for process in queue.workers:
        stop_worker(process)
    queue.server.stop()


def test_sessions_run_on_celery_workers_and_cancel_reaches_them(app, queue, demo_files):
    """Does a session started through the API wait for a Celery worker (the web process
    runs none), complete on it, and does a cancel stop a running one within seconds?"""
    _, token = token_for("celery-operator")
    model_id = upload_model(app, token, demo_files)
    status, started = queue.call(
        "POST", "/optimization/sessions", token, {"model_id": model_id, "techniques": ["quantization"]}
    )
    assert status == 202
    # A local executor polling every 0.2 s would have taken it long before.
    time.sleep(2)
    assert queue.session(token, started["session_id"])["status"] == "queued"
    queue.start_worker()
    done = queue.wait_for(token, started["session_id"], seconds=120)  # CI runs tests beside it
    assert done["status"] == "completed", done
    assert done["results"]["size_reduction_percent"] > 0

    _, long = queue.call("POST", "/optimization/sessions", token, {"model_id": model_id, **LONG})
    queue.wait_for(token, long["session_id"], {"running"})
    asked = time.monotonic()
    status, _ = queue.call("POST", f"/optimization/sessions/{long['session_id']}/cancel", token)
    assert status == 202
    done = queue.wait_for(token, long["session_id"], seconds=30)
    assert done["status"] == "cancelled", done
    # Within seconds (poll_seconds, then the worker's next check; the grace period at most),
    # with room for a machine busy with other tests.
    assert time.monotonic() - asked < 20


def test_a_session_whose_worker_is_killed_ends_worker_lost(app, queue, demo_files):
    """Is a session whose Celery worker dies (SIGKILL, every process of it) failed
    `worker_lost` soon after a new worker starts, never left running?"""
    _, token = token_for("celery-killer")
    model_id = upload_model(app, token, demo_files)
    first = queue.start_worker()
    _, long = queue.call("POST", "/optimization/sessions", token, {"model_id": model_id, **LONG})
    queue.wait_for(token, long["session_id"], {"running"}, seconds=max(10, 40 - (time.monotonic() - first)))
    time.sleep(1)
    os.killpg(queue.workers[0].pid, signal.SIGKILL)
    queue.workers[0].wait()
    assert queue.session(token, long["session_id"])["status"] == "running"
    ready = queue.start_worker()
    done = queue.wait_for(token, long["session_id"], seconds=30)
    assert time.monotonic() - ready < 30
    assert (done["status"], done["error_type"]) == ("failed", "worker_lost"), done
