"""Admin pages: users and the audit trail."""

import pytest
from werkzeug.security import check_password_hash

from tests.helpers import make_user
from webapp.extensions import db
from webapp.services import audit
from webapp.tables import AuditEntry, User


@pytest.mark.parametrize("who", ["operator", "viewer"])
@pytest.mark.parametrize("path", ["/admin/users", "/admin/audit"])
def test_non_admins_get_an_audited_403(request, who, path):
    role_client = request.getfixturevalue(who)
    response = role_client.client.get(path)
    assert response.status_code == 403
    assert "not allowed" in response.get_data(as_text=True)
    denial = db.session.query(AuditEntry).filter_by(allowed=False).one()
    assert denial.username == role_client.user.username
    assert denial.resource == path


def test_admin_adds_a_user(admin):
    response = admin.auth.post(
        "/admin/users", {"username": "Newbie", "password": "a-long-password", "role": "viewer"}
    )
    assert response.status_code == 302
    user = db.session.query(User).filter_by(username="newbie").one()
    assert user.role == "viewer"
    # Stored hashed: with the suite's cheap method here (tests/services/test_passwords.py
    # checks a server's default).
    assert "a-long-password" not in user.password_hash
    assert check_password_hash(user.password_hash, "a-long-password")


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"username": "bad name", "password": "a-long-password", "role": "viewer"}, "username"),
        ({"username": "ok", "password": "short", "role": "viewer"}, "password"),
        ({"username": "ok", "password": "a-long-password", "role": "root"}, "role"),
        ({"username": "admin-user", "password": "a-long-password", "role": "viewer"}, "username"),
    ],
)
def test_bad_new_user_shows_inline_errors(admin, form, field):
    before = db.session.query(User).count()
    response = admin.auth.post("/admin/users", form)
    assert response.status_code == 400
    assert f'id="{field}-error"' in response.get_data(as_text=True)
    assert db.session.query(User).count() == before


def test_admin_changes_a_role_and_deactivates(admin):
    target = make_user("bob", "viewer")
    admin.auth.post(f"/admin/users/{target.id}/role", {"role": "operator"}, page="/admin/users")
    admin.auth.post(f"/admin/users/{target.id}/active", {"active": "0"}, page="/admin/users")
    db.session.refresh(target)
    assert (target.role, target.active) == ("operator", False)
    actions = [e.action for e in db.session.query(AuditEntry).filter_by(resource="user:bob")]
    assert actions == ["user.create", "user.role", "user.deactivate"] or actions[-2:] == [
        "user.role",
        "user.deactivate",
    ]


def test_the_last_admin_cannot_be_demoted_or_deactivated(admin):
    me = admin.user
    page = admin.auth.post(f"/admin/users/{me.id}/role", {"role": "viewer"}, page="/admin/users")
    assert page.status_code == 302
    admin.auth.post(f"/admin/users/{me.id}/active", {"active": "0"}, page="/admin/users")
    db.session.refresh(me)
    assert (me.role, me.active) == ("admin", True)
    listing = admin.client.get("/admin/users").get_data(as_text=True)
    assert "last active administrator" in listing


def test_audit_trail_filters_and_pages(admin):
    for n in range(60):
        audit.record("probe.thing", username=f"user{n % 2}", resource=f"thing:{n}", commit=False)
    db.session.commit()
    page = admin.client.get("/admin/audit?action=probe.thing&user=user1")
    text = page.get_data(as_text=True)
    assert "30 entries" in text and "page 1 of 1" in text
    assert "thing:59" in text and "thing:58" not in text
    first = admin.client.get("/admin/audit?action=probe.thing").get_data(as_text=True)
    assert "page 1 of 2" in first and "action=probe.thing&amp;page=2" in first
    second = admin.client.get("/admin/audit?action=probe.thing&page=2").get_data(as_text=True)
    assert "thing:0<" in second and "thing:59<" not in second


def test_audit_trail_answers_htmx_with_the_table_only(admin):
    full = admin.client.get("/admin/audit")
    partial = admin.client.get("/admin/audit", headers={"HX-Request": "true"})
    assert "<html" in full.get_data(as_text=True)
    assert partial.get_data(as_text=True).lstrip().startswith('<div id="audit-table">')
    assert "HX-Request" in partial.headers["Vary"]
    restore = admin.client.get(
        "/admin/audit", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    )
    assert "<html" in restore.get_data(as_text=True)


def test_audit_trail_ignores_junk_filters(admin):
    response = admin.client.get("/admin/audit?page=-4&outcome=maybe&user=" + "x" * 500)
    assert response.status_code == 200
