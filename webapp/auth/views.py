"""Login and logout pages."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from ..services import users
from .budget import login_budget
from .schemas import LoginSchema, load_form

bp = Blueprint("auth", __name__)

WRONG_CREDENTIALS = "Wrong username or password."


def login_limit() -> str:
    return current_app.config["OPTIDECK"]["security"]["login_rate_limit"]


def _safe_next(target: str | None) -> str:
    """Follow ?next= only to a path on this site, never to another host (nor one whose line
    break would split the Location header)."""
    if target and target.isprintable():
        parts = urlsplit(target)
        if (
            not parts.scheme
            and not parts.netloc
            and target.startswith("/")
            and not target.startswith("//")
            and "\\" not in target
        ):
            return target
    return url_for("dashboard.index")


@bp.route("/login", methods=["GET", "POST"])
@login_budget
def login():
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.index"))
    errors: dict[str, list[str]] = {}
    username = ""
    if request.method == "POST":
        data, errors = load_form(LoginSchema(), request.form)
        username = request.form.get("username", "")[:64]
        user = users.log_in(data["username"], data["password"], "page") if data else None
        if user is not None:
            login_user(user)
            return redirect(_safe_next(request.args.get("next")))
        # One message whatever was wrong, so the page never tells whether a name exists.
        errors = {"form": [WRONG_CREDENTIALS]}
    status = 200 if not errors else 400
    return render_template("auth/login.html", errors=errors, username=username), status


@bp.post("/logout")
@login_required
def logout():
    users.sign_out(current_user._get_current_object())
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
