"""Logging in and out of the pages."""

import pytest

from tests.helpers import PASSWORD, csrf_from, make_user
from webapp.extensions import db
from webapp.services import users
from webapp.tables import AuditEntry

PAGES = ["/dashboard", "/sessions", "/models", "/config", "/account/tokens"]


@pytest.mark.parametrize("path", PAGES + ["/admin/users", "/admin/audit"])
def test_pages_send_strangers_to_the_login_page(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_login_shows_the_dashboard_and_logout_ends_the_session(app, client, auth):
    make_user("ada")
    response = auth.login("ada")
    assert response.headers["Location"] == "/dashboard"
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert "Welcome, ada" in page.get_data(as_text=True)
    assert auth.logout().headers["Location"] == "/login"
    assert client.get("/dashboard").status_code == 302
    actions = [e.action for e in db.session.query(AuditEntry).filter_by(username="ada")]
    assert actions == ["login", "logout"]


@pytest.mark.parametrize("path", PAGES)
def test_every_shell_page_renders_for_a_viewer(viewer, path):
    response = viewer.client.get(path)
    assert response.status_code == 200
    assert 'aria-current="page"' in response.get_data(as_text=True)


def test_wrong_password_and_unknown_user_read_the_same(app, client, auth):
    make_user("ada")
    wrong = auth.login("ada", "wrong-password-here")
    unknown = auth.login("nobody", "wrong-password-here")
    assert wrong.status_code == unknown.status_code == 400
    for response in (wrong, unknown):
        assert "Wrong username or password." in response.get_data(as_text=True)
    failures = db.session.query(AuditEntry).filter_by(action="login", allowed=False).count()
    assert failures == 2


@pytest.mark.parametrize("username", ["a" * 65, "a" * 10_000])
def test_overlong_username_gets_the_same_inline_message(app, client, auth, username):
    response = auth.login(username)
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "Wrong username or password." in text
    assert "a" * 65 not in text  # the echo in the form is cut to the field's length


def test_non_utf8_username_is_refused_cleanly(app, client):
    make_user("ada")
    token = csrf_from(client, "/login")
    body = b"username=ad%FF%FEa&password=" + PASSWORD.encode() + b"&csrf_token=" + token.encode()
    response = client.post("/login", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert "Wrong username or password." in response.get_data(as_text=True)


def test_deactivated_user_cannot_log_in_and_is_logged_out(app, client, auth):
    user = make_user("ada")
    root = make_user("root", "admin")
    auth.login("ada")
    users.set_active(user, False, by=root)
    assert client.get("/dashboard").status_code == 302
    assert auth.login("ada").status_code == 400


def test_form_post_without_csrf_token_is_refused(app, client):
    make_user("ada")
    client.get("/login")
    response = client.post("/login", data={"username": "ada", "password": PASSWORD})
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    # And it did not log anyone in.
    assert client.get("/dashboard").status_code == 302


def test_logout_needs_csrf_too(operator):
    response = operator.client.post("/logout")
    assert response.status_code == 400
    assert operator.client.get("/dashboard").status_code == 200


@pytest.mark.parametrize(
    ("target", "landing"),
    [
        ("/config", "/config"),
        ("//evil.example/x", "/dashboard"),
        ("https://evil.example/", "/dashboard"),
        ("/\\evil.example", "/dashboard"),
    ],
)
def test_next_only_leads_to_this_site(app, client, target, landing):
    make_user("ada")
    token = csrf_from(client, "/login")
    response = client.post(
        f"/login?next={target}", data={"username": "ada", "password": PASSWORD, "csrf_token": token}
    )
    assert response.headers["Location"] == landing


def test_login_page_is_rate_limited(make_app):
    app = make_app(security={"login_rate_limit": "2 per minute"})
    client = app.test_client()
    codes = []
    for _ in range(3):
        token = csrf_from(client, "/login")
        codes.append(
            client.post("/login", data={"username": "x", "password": "y", "csrf_token": token}).status_code
        )
    assert codes == [400, 400, 429]


def test_session_cookie_is_httponly_and_samesite(app, client, auth):
    make_user("ada")
    response = auth.login("ada")
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
