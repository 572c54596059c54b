"""Access rules and the error body on every /api/ response.

The routes below are registered by the test itself: the guards they exercise
are the ones every real API blueprint gets from ApiBlueprint.
"""

import pytest
import sqlalchemy.exc
from flask import g

from webapp.api import ApiBlueprint
from webapp.auth.guards import roles_required
from webapp.extensions import db
from webapp.tables import AuditEntry, Role

ERROR_FIELDS = {"error", "message", "details", "timestamp", "request_id"}


@pytest.fixture
def app(make_app):
    app = make_app()
    probe = ApiBlueprint("probe", __name__)

    @probe.route("/probe", methods=["GET", "POST"])
    def change():
        return {"user": g.api_user.username}

    @probe.route("/probe/admin", methods=["POST"])
    @roles_required(Role.ADMIN)
    def admin_only():
        return {"ok": True}

    @probe.route("/probe/crash")
    def crash():
        raise RuntimeError("boom")

    @probe.route("/probe/pool")
    def pool_exhausted():
        # What SQLAlchemy raises when no connection of the pool came free in time.
        raise sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")

    app.register_blueprint(probe, url_prefix="/api/v1")
    with app.app_context():
        yield app


def test_read_only_token_reads_but_cannot_change_anything(app, api_client):
    reader = api_client("operator", read_only=True)
    assert reader.get("/api/v1/probe").status_code == 200
    response = reader.post("/api/v1/probe")
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    denial = db.session.query(AuditEntry).filter_by(allowed=False).one()
    assert denial.username == reader.user.username
    assert denial.detail == "read-only token"


def test_read_only_token_may_still_revoke_itself(app, api_client):
    reader = api_client("viewer", read_only=True)
    assert reader.delete("/api/v1/auth/token").status_code == 204
    assert reader.get("/api/v1/probe").status_code == 401


@pytest.mark.parametrize(("role", "status"), [("admin", 200), ("operator", 403), ("viewer", 403)])
def test_roles_that_may_not_act_get_an_audited_403(app, api_client, role, status):
    caller = api_client(role)
    response = caller.post("/api/v1/probe/admin")
    assert response.status_code == status
    denials = db.session.query(AuditEntry).filter_by(allowed=False).all()
    assert len(denials) == (0 if status == 200 else 1)


def test_unknown_route_method_and_crash_all_answer_the_error_body(app, api_client):
    caller = api_client("operator")
    for response, status in [
        (caller.get("/api/v1/no-such-thing"), 404),
        (caller.client.put("/api/v1/auth/token"), 405),
        (caller.get("/api/v1/probe/crash"), 500),
    ]:
        assert response.status_code == status
        assert response.is_json
        body = response.get_json()
        assert set(body) == ERROR_FIELDS
        assert body["request_id"] == response.headers["X-Request-ID"]
        assert body["timestamp"].endswith("Z")


def test_a_500_says_nothing_of_the_exception(app, api_client):
    body = api_client("operator").get("/api/v1/probe/crash").get_json()
    assert body["error"] == "internal_error"
    assert "boom" not in repr(body)


def test_an_exhausted_database_pool_is_a_503_to_retry_not_a_crash(app, api_client, caplog):
    response = api_client("operator").get("/api/v1/probe/pool")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = response.get_json()
    assert set(body) == ERROR_FIELDS
    assert (body["error"], body["message"]) == ("unavailable", "The server is busy; try again in a moment.")
    assert "QueuePool" not in repr(body)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # no traceback: not a bug


def test_html_pages_get_html_errors_not_json(app, client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "There is nothing at this address." in response.get_data(as_text=True)


def test_plain_request_id_is_echoed(app, client):
    response = client.get("/healthz", headers={"X-Request-ID": "trace-abc.123_x"})
    assert response.headers["X-Request-ID"] == "trace-abc.123_x"


@pytest.mark.parametrize(
    "junk",
    [
        "has spaces in it",
        "x" * 65,
        "semi;colon",
        "<script>",
        "line\\nbreak",
    ],
)
def test_junk_request_id_is_replaced_not_echoed(app, client, junk):
    response = client.get("/api/v1/nothing", headers={"X-Request-ID": junk})
    given = response.headers["X-Request-ID"]
    assert given != junk
    assert len(given) == 32 and given.isalnum()
    assert response.get_json()["request_id"] == given


def test_every_response_has_a_request_id(app, client):
    for path in ("/healthz", "/login", "/dashboard", "/api/v1/openapi.json"):
        assert client.get(path).headers.get("X-Request-ID")


def test_allowed_requests_are_logged_with_user_and_role(app, api_client, caplog):
    import logging

    logger = logging.getLogger("optideck.request")
    logger.addHandler(caplog.handler)
    try:
        caller = api_client("viewer")
        caller.get("/api/v1/probe", headers={"X-Request-ID": "req-42"})
    finally:
        logger.removeHandler(caplog.handler)
    record = next(r for r in caplog.records if getattr(r, "request_id", None) == "req-42")
    assert (record.method, record.path, record.status) == ("GET", "/api/v1/probe", 200)
    assert (record.user, record.role) == (caller.user.username, "viewer")
    assert record.duration_ms >= 0


def test_cors_is_off_by_default(app, client):
    response = client.get("/api/v1/openapi.json", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_answers_only_configured_origins(make_app):
    app = make_app(cors={"origins": ["https://ops.example"]})
    client = app.test_client()
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Authorization"}
    ok = client.options("/api/v1/auth/token", headers={"Origin": "https://ops.example", **preflight})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ops.example"
    assert "Access-Control-Allow-Credentials" not in ok.headers
    other = client.options("/api/v1/auth/token", headers={"Origin": "https://evil.example", **preflight})
    assert "Access-Control-Allow-Origin" not in other.headers
    # Pages are never cross-origin.
    page = client.get("/login", headers={"Origin": "https://ops.example"})
    assert "Access-Control-Allow-Origin" not in page.headers


def test_each_request_gets_its_own_id_and_identity(app, api_client):
    caller = api_client("viewer")
    first = caller.get("/api/v1/probe")
    second = caller.client.get("/api/v1/probe")
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    # The second request sent no token: nothing of the first may carry over.
    assert second.status_code == 401
