"""A browser session ends on the server: logout, deactivation and a role change."""

from tests.helpers import AuthActions, csrf_from, make_user
from webapp.extensions import db
from webapp.services import users
from webapp.tables import ApiToken

PAGES = ["/dashboard", "/sessions", "/models", "/config", "/account/tokens"]


def replay(app, cookie: str):
    """Another browser (same user agent and address) sending a saved session cookie."""
    thief = app.test_client()
    thief.set_cookie("session", cookie)
    return thief


def assert_signed_out(client):
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login")


def test_a_cookie_saved_before_logout_opens_nothing_after_it(app, client, auth):
    """Can a session cookie copied before logout still open pages or mint an API token?"""
    make_user("ada")
    auth.login("ada")
    form_token = csrf_from(client, "/account/tokens")
    saved = client.get_cookie("session").value
    assert replay(app, saved).get("/dashboard").status_code == 200  # it did work

    assert auth.logout().headers["Location"] == "/login"

    thief = replay(app, saved)
    assert_signed_out(thief)
    minted = thief.post(
        "/account/tokens", data={"name": "stolen", "expires_in_days": "7", "csrf_token": form_token}
    )
    assert minted.status_code == 302 and minted.headers["Location"].startswith("/login")
    assert db.session.query(ApiToken).count() == 0


def test_logging_in_again_does_not_revive_an_old_cookie(app, client, auth):
    make_user("ada")
    auth.login("ada")
    saved = client.get_cookie("session").value
    auth.logout()
    auth.login("ada")
    assert client.get("/dashboard").status_code == 200
    assert_signed_out(replay(app, saved))


def test_logout_ends_the_accounts_other_browser_sessions(app):
    """Logout means the account's sessions end on the server, not only this tab's cookie."""
    make_user("ada")
    laptop, phone = app.test_client(), app.test_client()
    AuthActions(laptop).login("ada")
    AuthActions(phone).login("ada")
    AuthActions(laptop).logout()
    assert_signed_out(phone)


def test_deactivation_ends_browser_sessions_for_good(app, client, auth):
    """After deactivation and reactivation, does a cookie from before still work? It must not."""
    ada = make_user("ada")
    root = make_user("root", "admin")
    auth.login("ada")
    saved = client.get_cookie("session").value
    users.set_active(ada, False, by=root)
    users.set_active(ada, True, by=root)
    assert_signed_out(replay(app, saved))
    assert auth.login("ada").status_code == 302  # a new login works


def test_a_role_change_signs_the_browser_out(app, client, auth):
    """Is a browser opened as admin still an admin's after a demotion? It must sign in again."""
    ada = make_user("ada", "admin")
    root = make_user("root", "admin")
    auth.login("ada")
    assert client.get("/admin/users").status_code == 200
    users.set_role(ada, "viewer", by=root)
    assert_signed_out(client)
    auth.login("ada")
    assert client.get("/admin/users").status_code == 403


def test_setting_the_same_role_keeps_the_session(app, client, auth):
    ada = make_user("ada")
    root = make_user("root", "admin")
    auth.login("ada")
    users.set_role(ada, "operator", by=root)
    assert client.get("/dashboard").status_code == 200
