"""The Configuration page: the optimization criteria, their versions, and the server settings."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from marshmallow import fields

from ..auth.guards import roles_required
from ..bounds import parse_id
from ..config import masked
from ..engine.techniques import TECHNIQUES, criteria_params
from ..services import criteria, policy
from ..services.errors import ServiceError
from . import page_blueprint

bp = page_blueprint("config", __name__)


def form_to_document(form) -> dict:
    """An HTML form as the JSON document the schema checks: numbers parsed where they parse."""
    document = {}
    for name, field in criteria.CriteriaSchema().fields.items():
        if isinstance(field, fields.List):
            document[name] = form.getlist(name)
        elif isinstance(field, fields.Boolean):
            document[name] = name in form
        elif name in form:
            raw = form[name].strip()
            try:
                document[name] = (
                    int(raw)
                    if isinstance(field, fields.Integer)
                    else float(raw)
                    if isinstance(field, fields.Float)
                    else raw
                )
            except ValueError:
                document[name] = raw  # left as typed; the schema names the field
    return document


def _based_on(form) -> int | None:
    try:
        return parse_id(form.get("version", ""), smallest=0)
    except ValueError:
        return None


def _page(document=None, errors=None, stale=None, status=200, dirty=False):
    in_force = criteria.current()
    user = current_user._get_current_object()
    context = {
        "in_force": in_force,
        "document": document or in_force.document,
        "version": in_force.version,
        "errors": errors or {},
        "stale": stale,
        "dirty": dirty,
        "can_edit": policy.can_administer(user),
        "techniques": [(t.id, t.label) for t in TECHNIQUES.values()],
        "technique_params": criteria_params(),
        "deployments": [(d, d) for d in criteria.DEPLOYMENTS],
        "runtimes": [(r, r) for r in criteria.RUNTIMES],
        "threads_max": criteria.THREADS_MAX,
    }
    context.update(
        versions=[*criteria.versions(), criteria.get_version(0)],
        settings=masked(current_app.config["OPTIDECK"]),
        sandbox=current_app.extensions["optideck.sandbox"],
    )
    return render_template("config/index.html", **context), status


@bp.get("/config")
def index():
    return _page()


@bp.post("/config/validate")
@roles_required(*policy.ADMINISTRATORS)
def validate_form():
    """Checks the form as it is edited (htmx), without saving anything."""
    errors = criteria.problems(form_to_document(request.form))
    return render_template(
        "config/_validation.html", errors=errors, fields=list(criteria.CriteriaSchema().fields)
    )


@bp.post("/config")
@roles_required(*policy.ADMINISTRATORS)
def save():
    document = form_to_document(request.form)
    based_on = _based_on(request.form)
    try:
        saved = criteria.save(document, based_on, current_user._get_current_object())
    except ServiceError as exc:
        if exc.error == "stale_version":
            return _page(document, {}, _stale(document, based_on, exc.details), 409, dirty=True)
        return _page(document, exc.details, status=exc.status, dirty=True)
    flash(f"Saved the criteria as version {saved.version}.", "success")
    return redirect(url_for("config.index"))


def _stale(document: dict, based_on: int, details: dict) -> dict:
    """A save that lost the race, as the form explains it: where the user's form and the
    version saved meanwhile differ, and which of those fields the other save changed. The
    form is then based on that version, so saving again is one deliberate step."""
    theirs = {key: value for key, value in details["current"].items() if key != "version"}
    mine = criteria.validate_document(document)  # it was valid: only the version clashed
    changed_meanwhile = {
        field for field, _, _ in criteria.diff(criteria.get_version(based_on).document, theirs)
    }
    return {
        "based_on": based_on,
        "current_version": details["current_version"],
        "changes": [
            (field, yours, now, field in changed_meanwhile)
            for field, yours, now in criteria.diff(mine, theirs)
        ],
    }


@bp.get("/config/versions/<int:number>")
def version(number: int):
    old = criteria.get_version(number)
    in_force = criteria.current()
    return render_template(
        "config/version.html",
        old=old,
        in_force=in_force,
        changes=criteria.diff(old.document, in_force.document),
        can_edit=policy.can_administer(current_user),
    )


@bp.post("/config/versions/<int:number>/revert")
@roles_required(*policy.ADMINISTRATORS)
def revert(number: int):
    try:
        saved = criteria.revert(number, _based_on(request.form), current_user._get_current_object())
    except ServiceError as exc:
        flash(exc.message, "error")
        return redirect(url_for("config.version", number=number))
    flash(f"Version {number} restored as version {saved.version}.", "success")
    return redirect(url_for("config.index"))
