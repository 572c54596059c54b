"""Administration: users, the audit trail and the system's state."""

from __future__ import annotations

import os

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ..auth.guards import roles_required
from ..auth.schemas import NEW_PASSWORD_LENGTH, NewUserSchema, RoleChangeSchema, load_form
from ..extensions import db
from ..services import audit, get, metrics, policy, system_status, users
from ..tables import Role
from . import is_partial, page_blueprint

bp = page_blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
@roles_required(*policy.ADMINISTRATORS)
def require_admin():
    return None


def _users_page(errors=None, form=None, status=200):
    return render_template(
        "admin/users.html",
        users=users.list_all(),
        roles=[r.value for r in Role],
        role_options=[(r.value, r.value) for r in Role],
        password_min=NEW_PASSWORD_LENGTH.min,
        errors=errors or {},
        form=form or {},
    ), status


def _target(user_id: int):
    user = users.get(user_id)
    if user is None:
        abort(404)
    return user


@bp.get("/users")
def user_list():
    return _users_page()


@bp.post("/users")
def user_create():
    data, errors = load_form(NewUserSchema(), request.form)
    if not errors:
        try:
            users.create(
                data["username"], data["password"], data["role"], by=current_user._get_current_object()
            )
        except users.UserError as exc:
            errors = {"username": [str(exc)]}
    if errors:
        return _users_page(errors=errors, form=request.form, status=400)
    flash(f"User {data['username']} created as {data['role']}.", "success")
    return redirect(url_for("admin.user_list"))


@bp.post("/users/<int:user_id>/role")
def user_role(user_id: int):
    user = _target(user_id)
    data, errors = load_form(RoleChangeSchema(), request.form)
    if errors:
        flash("Pick one of the listed roles.", "error")
        return redirect(url_for("admin.user_list"))
    try:
        users.set_role(user, data["role"], by=current_user._get_current_object())
        flash(f"{user.username} is now {user.role}.", "success")
    except users.UserError as exc:
        flash(str(exc), "error")
    return redirect(url_for("admin.user_list"))


@bp.post("/users/<int:user_id>/active")
def user_active(user_id: int):
    user = _target(user_id)
    active = request.form.get("active") == "1"
    try:
        users.set_active(user, active, by=current_user._get_current_object())
        flash(f"{user.username} {'activated' if active else 'deactivated'}.", "success")
    except users.UserError as exc:
        flash(str(exc), "error")
    return redirect(url_for("admin.user_list"))


@bp.get("/audit")
def audit_trail():
    filters = audit.AuditFilters.from_args(request.args)
    page = audit.search(filters)
    template = "admin/_audit_table.html" if is_partial() else "admin/audit.html"
    response = render_template(template, page=page, filters=filters, actions=audit.known_actions())
    return response, 200, {"Vary": "HX-Request"}


@bp.get("/system")
def system():
    """Processes, workers, queue, connections, alerts, isolation, versions and storage at a glance."""
    settings = current_app.config["OPTIDECK"]
    return render_template(
        "admin/system.html",
        pid=os.getpid(),
        server=settings["server"],
        multiprocess=metrics.multiprocess_dir() is not None,
        load=system_status.current(),
        backend=settings["executor"]["backend"],
        workers=system_status.workers(),
        connections=metrics.connections_open(),
        alerts=metrics.alerts_raised(),
        failures=metrics.recent_failures(),
        isolation=get("sandbox").describe(),
        versions=metrics.versions(),
        storage=metrics.storage_use(),
        database=db.engine.url.get_backend_name(),
        redis_configured=bool(settings["redis"]["url"]),
        store=settings["storage"],
        metrics_settings=settings["metrics"],
    )
