"""The Celery side a web process sees: the live workers (a registry on the real Redis,
database 13, which no other test uses) and the sweep that fails sessions whose worker
died, even when no worker is left to notice."""

import time
from datetime import timedelta

import pytest
import redis

from tests.conftest import _logged_in
from tests.factories import gen_model, gen_session
from tests.helpers import api_client_for, make_user
from webapp.extensions import db
from webapp.services import celery_queue, system_status
from webapp.services.celery_queue import WORKER_KEY_PREFIX, WORKERS_KEY, WorkerRegistry
from webapp.tables import OptimizationSession, utcnow

URL = "redis://127.0.0.1:6379/13"
pytestmark = pytest.mark.xdist_group("redis-db-13")


@pytest.fixture
def celery_app(make_app, monkeypatch):
    redis.Redis.from_url(URL).flushdb()
    # Every read goes to Redis (a process otherwise reads the registry once a second).
    monkeypatch.setattr(celery_queue, "WORKERS_READ_SECONDS", 0)
    app = make_app(
        executor={"backend": "celery", "max_workers": 3, "heartbeat_timeout_seconds": 5},
        redis={"url": URL},
    )
    with app.app_context():
        yield app
    app.extensions["optideck.executor"].shutdown()
    app.extensions["optideck.notifications"].stop()


def test_capacity_is_the_sum_over_the_live_workers(celery_app):
    """Does the load add up every live worker's concurrency, and drop a worker that
    withdrew or stopped renewing its key?"""
    registry = WorkerRegistry(URL, ttl_seconds=1)
    queue = celery_app.extensions["optideck.executor"]
    assert queue.status()["capacity"] == 0
    assert system_status.current()["capacity"] == 0

    registry.announce("w1@host", 2, time.time())
    registry.announce("w2@host", 4, time.time())
    load = system_status.current()
    assert (load["capacity"], load["idle"]) == (6, 6)
    assert sorted(w["name"] for w in system_status.workers()) == ["w1@host", "w2@host"]

    scrape = celery_app.test_client().get("/metrics", headers=admin_token(celery_app)).get_data(as_text=True)
    assert "optideck_celery_workers 2.0" in scrape
    assert "optideck_workers_capacity 6.0" in scrape

    registry.withdraw("w1@host")
    assert system_status.current()["capacity"] == 4
    time.sleep(2.1)  # w2 stopped renewing: its announcement expired
    assert system_status.current()["capacity"] == 0
    assert system_status.workers() == []


def test_a_record_of_another_shape_is_left_out_not_a_500(celery_app):
    """Does a worker record the page cannot use (another version's, or not JSON) leave the
    System page, the dashboard and the load working, counting only the sound ones?"""
    registry = WorkerRegistry(URL, ttl_seconds=30)
    registry.announce("sound@host", 2, time.time())
    client = redis.Redis.from_url(URL)
    for name, raw in [
        ("text", '{"name": "text", "host": "h", "pid": 1, "concurrency": "2", "started": 1}'),
        ("missing", '{"name": "missing", "host": "h", "pid": 1, "started": 1}'),
        ("list", "[1, 2]"),
        ("garbage", "{not json"),
    ]:
        client.set(WORKER_KEY_PREFIX + name, raw, ex=30)
        client.zadd(WORKERS_KEY, {name: time.time() + 30})
    assert [w["name"] for w in system_status.workers()] == ["sound@host"]
    assert system_status.current()["capacity"] == 2
    admin = _logged_in(celery_app, "admin").client
    assert admin.get("/admin/system").status_code == 200
    assert admin.get("/dashboard").status_code == 200


def admin_token(app) -> dict:
    return {"Authorization": f"Bearer {api_client_for(app, 'metrics-admin', 'admin').token}"}


def test_redis_down_costs_the_count_not_the_status(make_app):
    """With Redis unreachable, is the load still answered (one worker's concurrency) and
    the worker list said to be unknown?"""
    app = make_app(
        executor={"backend": "celery", "max_workers": 3},
        redis={"url": "redis://127.0.0.1:1/0"},
    )
    with app.app_context():
        assert system_status.current()["capacity"] == 3
        assert system_status.workers() is None
    app.extensions["optideck.notifications"].stop()


def test_the_system_page_lists_the_workers_or_says_none_runs(celery_app):
    client = _logged_in(celery_app, "admin").client
    page = client.get("/admin/system").get_data(as_text=True)
    assert 'id="system-no-workers"' in page
    assert "No Celery worker is running" in page

    WorkerRegistry(URL, ttl_seconds=30).announce("optideck-77@box", 3, time.time())
    page = client.get("/admin/system").get_data(as_text=True)
    assert "optideck-77@box" in page
    assert 'id="system-no-workers"' not in page


def test_a_web_process_fails_a_session_whose_worker_died(celery_app):
    """With no worker alive, is a running session whose heartbeat went stale failed
    worker_lost by the web process's sweep, and a live one left alone?"""
    owner = make_user("sweep-owner")
    model = gen_model(owner)
    stale = gen_session(model, owner, status="running", heartbeat_at=utcnow() - timedelta(minutes=5))
    live = gen_session(model, owner, status="running", heartbeat_at=utcnow() + timedelta(minutes=5))
    stale_id, live_id = stale.id, live.id
    queue = celery_app.extensions["optideck.executor"]
    queue.start()
    deadline = time.monotonic() + 15
    while True:
        db.session.expire_all()
        if db.session.get(OptimizationSession, stale_id).status == "failed":
            break
        assert time.monotonic() < deadline, "the stale session was not swept"
        time.sleep(0.2)
    failed = db.session.get(OptimizationSession, stale_id)
    assert failed.error_type == "worker_lost"
    assert db.session.get(OptimizationSession, live_id).status == "running"
