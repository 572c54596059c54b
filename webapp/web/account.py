"""The user's own API tokens: create (shown once), list, revoke."""

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ..auth.schemas import NewTokenSchema, load_form
from ..services import tokens
from . import page_blueprint

bp = page_blueprint("account", __name__)

EXPIRY_CHOICES = (7, 30, 90, 365)
DEFAULT_EXPIRY_DAYS = 90


def _expiry_choices() -> list[int]:
    limit = current_app.config["OPTIDECK"]["security"]["personal_token_max_days"]
    return [days for days in EXPIRY_CHOICES if days <= limit] or [limit]


def _page(errors=None, issued=None, form=None, status=200):
    user = current_user._get_current_object()
    return render_template(
        "account/tokens.html",
        tokens=tokens.for_user(user),
        expiry_options=[(days, f"{days} days") for days in _expiry_choices()],
        default_expiry=min(DEFAULT_EXPIRY_DAYS, max(_expiry_choices())),
        errors=errors or {},
        issued=issued,
        form=form or {},
    ), status


@bp.get("/account/tokens")
def token_list():
    return _page()


@bp.post("/account/tokens")
def token_create():
    data, errors = load_form(NewTokenSchema(), request.form)
    if data and data["expires_in_days"] not in _expiry_choices():
        errors = {"expires_in_days": ["Pick one of the offered lifetimes."]}
    if errors:
        return _page(errors=errors, form=request.form, status=400)
    issued = tokens.create_personal(
        current_user._get_current_object(),
        data["name"],
        data["expires_in_days"],
        data["read_only"],
    )
    # Rendered directly, never redirected or flashed: the token exists only in
    # this response and is never stored anywhere it could be read back.
    return _page(issued=issued)


@bp.post("/account/tokens/<int:token_id>/revoke")
def token_revoke(token_id: int):
    user = current_user._get_current_object()
    record = tokens.get_owned(user, token_id)
    if record is None:
        abort(404)
    tokens.revoke(record, by=user)
    flash(f"Token “{record.name}” revoked.", "success")
    return redirect(url_for("account.token_list"))
