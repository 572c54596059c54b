"""/healthz, /readyz and the start-up checks."""

import socket

import pytest
from sqlalchemy import text

from webapp.extensions import db
from webapp.health import run_checks


def test_healthz_needs_no_login(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_names_each_check(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = response.get_json()["checks"]
    assert set(checks) == {"database", "migrations", "storage"}
    assert all(check["ok"] for check in checks.values())


def test_readyz_reports_an_unmigrated_database(app, client):
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
    response = client.get("/readyz")
    assert response.status_code == 503
    migrations = response.get_json()["checks"]["migrations"]
    assert migrations["ok"] is False
    assert "init-db" in migrations["detail"]


def test_unwritable_storage_fails_its_check(make_app, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    app = make_app(storage={"dir": str(blocker / "store")})
    with app.app_context():
        checks = {check.name: check for check in run_checks()}
    assert checks["storage"].ok is False


def test_configured_redis_is_checked(make_app):
    app = make_app(redis={"url": "redis://127.0.0.1:6379/0"})
    with app.app_context():
        checks = {check.name: check for check in run_checks()}
    assert checks["redis"].ok, checks["redis"].detail


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_redis_makes_the_app_not_ready(make_app):
    app = make_app(redis={"url": f"redis://127.0.0.1:{_closed_port()}/0"})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"]["ok"] is False


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints_are_json(client, path):
    assert client.get(path).is_json
