"""Personal API tokens on /account/tokens."""

import re

import pytest

from tests.helpers import make_user
from webapp.extensions import db
from webapp.services import tokens
from webapp.tables import ApiToken

SHOWN_TOKEN = re.compile(r'id="new-token-value">(odk_[^<]+)<')


def create(role_client, **form):
    data = {"name": "nightly", "expires_in_days": "30", **form}
    return role_client.auth.post("/account/tokens", data)


def test_a_new_token_is_shown_once_and_works(operator):
    response = create(operator, read_only="true")
    assert response.status_code == 200
    token = SHOWN_TOKEN.search(response.get_data(as_text=True)).group(1)
    api = operator.client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 200
    record = db.session.query(ApiToken).one()
    assert record.read_only and record.kind == "personal"
    assert record.token_hash != token
    # Listed afterwards by its prefix only.
    listing = operator.client.get("/account/tokens").get_data(as_text=True)
    assert token not in listing
    assert record.prefix in listing
    assert "nightly" in listing


def test_token_can_be_used_on_the_api_then_revoked(app, operator):
    token = SHOWN_TOKEN.search(create(operator).get_data(as_text=True)).group(1)
    headers = {"Authorization": f"Bearer {token}"}
    record = db.session.query(ApiToken).one()
    response = operator.auth.post(f"/account/tokens/{record.id}/revoke", {}, page="/account/tokens")
    assert response.status_code == 302
    denied = operator.client.delete("/api/v1/auth/token", headers=headers)
    assert denied.get_json()["error"] == "token_invalid"


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"expires_in_days": "abc"}, "expires_in_days"),
        ({"expires_in_days": "3"}, "expires_in_days"),
        ({"expires_in_days": "100000"}, "expires_in_days"),
    ],
)
def test_bad_token_form_shows_inline_errors_and_creates_nothing(operator, form, field):
    response = create(operator, **form)
    assert response.status_code == 400
    assert f'id="{field}-error"' in response.get_data(as_text=True)
    assert db.session.query(ApiToken).count() == 0


def test_nobody_revokes_another_users_token(app, operator):
    other = make_user("someone")
    theirs = tokens.create_personal(other, "theirs", 30, False).record
    response = operator.auth.post(f"/account/tokens/{theirs.id}/revoke", {}, page="/account/tokens")
    assert response.status_code == 404
    db.session.refresh(theirs)
    assert theirs.revoked_at is None


def test_token_list_escapes_names(operator):
    create(operator, name="<script>alert(1)</script>")
    page = operator.client.get("/account/tokens").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page
