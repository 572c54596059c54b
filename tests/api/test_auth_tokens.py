"""POST/DELETE /api/v1/auth/token and POST /api/v1/auth/refresh."""

from datetime import timedelta

import pytest

from tests.helpers import PASSWORD, make_user
from webapp.extensions import db
from webapp.services import users
from webapp.tables import ApiToken, AuditEntry, utcnow


def login(client, username, password=PASSWORD):
    return client.post("/api/v1/auth/token", json={"username": username, "password": password})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_login_returns_a_bearer_token_pair(app, client):
    make_user("ada")
    response = login(client, "ada")
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "bearer"
    assert body["access_token"].startswith("odk_")
    assert body["refresh_token"].startswith("odr_")
    assert 3500 < body["expires_in"] <= 3600
    # Only hashes are stored.
    record = db.session.query(ApiToken).one()
    assert body["access_token"] not in (record.token_hash, record.refresh_hash)
    assert body["access_token"] not in repr(record.__dict__)


def test_username_is_case_insensitive(app, client):
    make_user("grace")
    assert login(client, "GRACE").status_code == 200


def test_wrong_password_and_unknown_user_get_the_same_answer(app, client):
    """Can a caller tell a wrong password from an unknown user? It must not."""
    make_user("ada")
    wrong = login(client, "ada", "not-the-password")
    unknown = login(client, "nobody", "not-the-password")
    assert wrong.status_code == unknown.status_code == 401
    for field in ("error", "message", "details"):
        assert wrong.get_json()[field] == unknown.get_json()[field]
    assert wrong.get_json()["error"] == "invalid_credentials"


def test_deactivated_user_cannot_log_in(app, client):
    user = make_user("ada")
    admin = make_user("root", "admin")
    users.set_active(user, False, by=admin)
    assert login(client, "ada").status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"username": "x" * 65, "password": "p"},
        {"username": "ada"},
        {"username": 12, "password": "p"},
        {"username": "ada", "password": "p" * 257},
    ],
)
def test_invalid_login_bodies_are_400_with_field_details(app, client, body):
    response = client.post("/api/v1/auth/token", json=body)
    assert response.status_code == 400
    data = response.get_json()
    assert data["error"] == "validation_error"
    assert set(data["details"]) & {"username", "password"}


def test_non_utf8_body_is_a_400_not_a_500(app, client):
    response = client.post(
        "/api/v1/auth/token",
        data=b'{"username": "\xff\xfe", "password": "x"}',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "validation_error"


def test_missing_header_is_token_missing(app, client):
    response = client.delete("/api/v1/auth/token")
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_missing"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Basic YWRhOnB3",
        "Bearer",
        "Bearer not-one-of-ours",
        "Bearer odk_unknown-token-value",
        "Bearer odk_" + "a" * 300,
    ],
)
def test_malformed_or_unknown_tokens_are_token_invalid(app, client, header):
    response = client.delete("/api/v1/auth/token", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_invalid"


def test_expired_token_is_token_expired(app, client):
    make_user("ada")
    token = login(client, "ada").get_json()["access_token"]
    record = db.session.query(ApiToken).one()
    record.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    response = client.delete("/api/v1/auth/token", headers=bearer(token))
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_expired"


def test_token_of_a_deactivated_user_stops_working(app, client):
    user = make_user("ada")
    admin = make_user("root", "admin")
    token = login(client, "ada").get_json()["access_token"]
    users.set_active(user, False, by=admin)
    response = client.delete("/api/v1/auth/token", headers=bearer(token))
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_invalid"
    # Reactivating the account does not bring old tokens back.
    users.set_active(user, True, by=admin)
    assert client.delete("/api/v1/auth/token", headers=bearer(token)).status_code == 401


def test_refresh_rotates_both_tokens(app, client):
    make_user("ada")
    first = login(client, "ada").get_json()
    response = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert response.status_code == 200
    second = response.get_json()
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    # The old pair is dead, the new one works.
    again = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert again.status_code == 401
    assert again.get_json()["error"] == "token_invalid"
    assert client.delete("/api/v1/auth/token", headers=bearer(first["access_token"])).status_code == 401
    assert client.delete("/api/v1/auth/token", headers=bearer(second["access_token"])).status_code == 204


def test_expired_refresh_token_is_token_expired(app, client):
    make_user("ada")
    first = login(client, "ada").get_json()
    record = db.session.query(ApiToken).one()
    record.refresh_expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    response = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert response.status_code == 401
    assert response.get_json()["error"] == "token_expired"


def test_revoke_kills_the_access_and_refresh_token(app, client):
    make_user("ada")
    pair = login(client, "ada").get_json()
    assert client.delete("/api/v1/auth/token", headers=bearer(pair["access_token"])).status_code == 204
    assert (
        client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 401
    )


def test_token_events_are_audited(app, client):
    make_user("ada")
    pair = login(client, "ada").get_json()
    login(client, "ada", "wrong-password")
    client.delete("/api/v1/auth/token", headers=bearer(pair["access_token"]))
    trail = [(e.action, e.username, e.allowed) for e in db.session.query(AuditEntry).order_by(AuditEntry.id)]
    assert ("login", "ada", True) in trail
    assert ("token.issue", "ada", True) in trail
    assert ("login", "ada", False) in trail
    assert ("token.revoke", "ada", True) in trail


def test_login_is_rate_limited(make_app):
    app = make_app(security={"login_rate_limit": "3 per minute"})
    client = app.test_client()
    codes = [login(client, "nobody", "wrong").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    last = login(client, "nobody", "wrong")
    assert last.get_json()["error"] == "rate_limited"
    assert "Retry-After" in last.headers


def test_with_redis_the_login_limit_is_shared_by_all_processes(make_app):
    """Two app instances (as two gunicorn workers) count attempts together."""
    import redis

    url = "redis://127.0.0.1:6379/15"
    redis.Redis.from_url(url).flushdb()
    settings = {"redis": {"url": url}, "security": {"login_rate_limit": "3 per minute"}}
    first, second = make_app(**settings).test_client(), make_app(**settings).test_client()
    codes = [login(client, "nobody", "wrong").status_code for client in (first, second, first, second)]
    assert codes == [401, 401, 401, 429]


def test_an_api_login_is_a_login(app, client):
    """Does logging in through the API record the last login, as the page does?"""
    user = make_user("ada")
    assert user.last_login_at is None
    assert login(client, "ada").status_code == 200
    db.session.refresh(user)
    assert user.last_login_at is not None
