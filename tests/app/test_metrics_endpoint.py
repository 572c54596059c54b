"""GET /metrics: the Prometheus text format, who may read it, and what it counts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.factories import gen_model, gen_session
from tests.helpers import make_user
from webapp.config import ConfigError
from webapp.extensions import db
from webapp.services import metrics
from webapp.tables import OptimizationSession, SessionEvent, utcnow

ERROR_FIELDS = {"error", "message", "details", "timestamp", "request_id"}


def scrape(caller) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape, after checking it parses."""
    response = caller.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def scraper(api_client):
    return api_client("admin")


def test_an_admin_token_reads_the_text_format(scraper):
    samples = scrape(scraper)
    names = {name for name, _ in samples}
    for expected in (
        "optideck_sessions",
        "optideck_queue_length",
        "optideck_workers_busy",
        "optideck_workers_capacity",
        "optideck_worker_utilisation",
        "optideck_database_up",
    ):
        assert expected in names
    assert value(samples, "optideck_database_up") == 1


def test_requests_are_counted_by_route_not_by_path(scraper):
    """Does a request count under its URL rule, so ids in paths never become labels?"""
    route = "/api/v1/optimization/sessions/<int:session_id>"
    labels = {"route": route, "method": "GET", "status": "404"}
    before = scrape(scraper)
    for session_id in (987654, 987655, 987656):
        assert scraper.get(f"/api/v1/optimization/sessions/{session_id}").status_code == 404
    assert scraper.get("/healthz").status_code == 200
    after = scrape(scraper)

    counted = value(after, "optideck_http_requests_total", **labels)
    assert counted - value(before, "optideck_http_requests_total", **labels) == 3
    timed = value(after, "optideck_http_request_duration_seconds_count", **labels)
    assert timed - value(before, "optideck_http_request_duration_seconds_count", **labels) == 3
    health = {"route": "/healthz", "method": "GET", "status": "200"}
    assert value(after, "optideck_http_requests_total", **health) > value(
        before, "optideck_http_requests_total", **health
    )
    assert not any("98765" in str(labels) for _, labels in after)


def test_unknown_paths_and_methods_share_one_label(scraper):
    before = scrape(scraper)
    scraper.get("/no/such/page/12345")
    scraper.client.open("/healthz", method="BREW")
    after = scrape(scraper)
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert (
        value(after, "optideck_http_requests_total", **unmatched)
        - value(before, "optideck_http_requests_total", **unmatched)
        == 1
    )
    assert not any("12345" in str(labels) or "BREW" in str(labels) for _, labels in after)


def test_sessions_by_status_match_the_database(app, scraper):
    owner = make_user("owner")
    model = gen_model(owner)
    for status, how_many in (("completed", 2), ("failed", 1), ("queued", 3), ("cancelled", 1)):
        for _ in range(how_many):
            gen_session(model, owner, status=status)
    expected = dict(
        db.session.execute(
            select(OptimizationSession.status, func.count()).group_by(OptimizationSession.status)
        ).all()
    )
    samples = scrape(scraper)
    for status in ("queued", "running", "completed", "failed", "cancelled"):
        assert value(samples, "optideck_sessions", status=status) == expected.get(status, 0)
    assert value(samples, "optideck_queue_length") == 3
    capacity = app.config["OPTIDECK"]["executor"]["max_workers"]
    assert value(samples, "optideck_workers_capacity") == capacity
    assert value(samples, "optideck_worker_utilisation") == 0


def test_cache_hits_and_misses_are_counted(scraper):
    before = scrape(scraper)
    for _ in range(3):
        assert scraper.get("/api/v1/dashboard/stats").status_code == 200
    after = scrape(scraper)
    misses = value(after, "optideck_cache_misses_total", figure="dashboard") - value(
        before, "optideck_cache_misses_total", figure="dashboard"
    )
    hits = value(after, "optideck_cache_hits_total", figure="dashboard") - value(
        before, "optideck_cache_hits_total", figure="dashboard"
    )
    assert (misses, hits) == (1, 2)


def test_step_durations_come_from_the_timeline(app, scraper):
    owner = make_user("owner")
    session = gen_session(gen_model(owner), owner, status="running")
    started = utcnow() - timedelta(seconds=3)
    for step in ("quantization", "candidate 7", "../../etc/passwd"):
        db.session.add(
            SessionEvent(session_id=session.id, kind="step_started", step=step, created_at=started)
        )
    db.session.commit()
    before = scrape(scraper)
    metrics.step_ended(session.id, "step_completed", "quantization")
    metrics.step_ended(session.id, "step_rolled_back", "candidate 7")
    metrics.step_ended(session.id, "step_skipped", "../../etc/passwd")
    metrics.step_ended(session.id, "step_started", "quantization")  # not an end: ignored
    after = scrape(scraper)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    done = {"technique": "quantization", "outcome": "completed"}
    assert grew("optideck_step_duration_seconds_count", **done) == 1
    assert grew("optideck_step_duration_seconds_sum", **done) >= 3
    assert (
        grew("optideck_step_duration_seconds_count", technique="search_candidate", outcome="rolled_back") == 1
    )
    assert grew("optideck_step_duration_seconds_count", technique="other", outcome="skipped") == 1
    assert not any("passwd" in str(labels) for _, labels in after)


def test_no_token_is_a_401_with_the_json_error_body(client):
    response = client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert response.status_code == 401
    body = response.get_json()
    assert set(body) == ERROR_FIELDS
    assert body["error"] == "token_missing"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_bad_token_is_a_401(client):
    response = client.get("/metrics", headers={"Authorization": "Bearer odk_nonsense"})
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_invalid"


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_a_non_admin_token_is_an_audited_403(api_client, role):
    caller = api_client(role)
    response = caller.get("/metrics")
    assert response.status_code == 403
    body = response.get_json()
    assert set(body) == ERROR_FIELDS
    assert body["error"] == "forbidden"
    assert "optideck_" not in response.get_data(as_text=True)


def test_the_test_client_is_not_allowed_by_default(client):
    """With allow_from empty, even the loopback address needs a token."""
    assert client.get("/metrics").status_code == 401


def test_an_allowed_address_needs_no_token(make_app):
    app = make_app(metrics={"allow_from": ["127.0.0.1", "10.0.0.0/8"]})
    client = app.test_client()
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.20.30.40"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::ffff:10.0.0.1"}).status_code == 200
    refused = client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "token_missing"


def test_metrics_can_be_turned_off(make_app):
    app = make_app(metrics={"enabled": False, "allow_from": ["127.0.0.1"]})
    assert app.test_client().get("/metrics").status_code == 404


def test_a_malformed_allow_from_entry_stops_start_up(make_app):
    with pytest.raises(ConfigError, match="metrics.allow_from"):
        make_app(metrics={"allow_from": ["not-an-address"]})


MULTIPROCESS_WORKER = textwrap.dedent(
    """
    from webapp.services import metrics
    metrics.count_request("/healthz", "GET", 200, 0.01)
    """
)
MULTIPROCESS_SCRAPE = textwrap.dedent(
    """
    from prometheus_client import generate_latest
    from webapp.services import metrics
    print(generate_latest(metrics.process_registry()).decode())
    """
)


def test_multiprocess_mode_adds_up_every_process(tmp_path):
    """Under several gunicorn workers, does a scrape of one see the requests of all?"""
    environ = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", MULTIPROCESS_WORKER], env=environ, check=True, timeout=60)
    text = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRAPE],
        env=environ,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert value(samples, "optideck_http_requests_total", route="/healthz", method="GET", status="200") == 2
