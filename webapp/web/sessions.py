"""Session pages: the filtered list, starting one, the detail with its timeline."""

from __future__ import annotations

from flask import Response, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user
from werkzeug.datastructures import MultiDict

from ..auth.guards import roles_required
from ..bounds import parse_id
from ..engine.search import AUTO
from ..engine.techniques import TECHNIQUES
from ..services import (
    model_store,
    optimization,
    policy,
    search_front,
    session_compare,
    session_query,
    session_summaries,
)
from ..services.errors import ServiceError
from ..tables import SessionStatus
from . import is_partial, page_blueprint

bp = page_blueprint("sessions", __name__)


def _user():
    return current_user._get_current_object()


def list_query_args(filters: dict, **changes) -> MultiDict:
    """The filters as URL arguments (defaults left out), so links keep them."""
    values = {**filters, **changes}
    args = MultiDict()
    for status in values.get("status") or []:
        args.add("status", status)
    for key in ("model_id", "q", "owner", "sort", "order", "skip", "limit"):
        value = values.get(key)
        default = {"sort": "created", "order": "desc", "skip": 0, "limit": session_query.DEFAULT_LIMIT}.get(
            key
        )
        if value not in (None, "", default):
            args[key] = value
    for key in ("created_from", "created_to"):
        if request.args.get(key) and key not in changes:
            args[key] = request.args[key]
    return args


def _list_context(user, args) -> dict:
    """The list page's data; invalid filters give an empty page and their errors."""
    errors = {}
    try:
        filters = session_query.parse(args)
        page = session_query.search(user, filters)
    except ServiceError as exc:
        errors = exc.details
        filters = session_query.parse(MultiDict())
        page = {"sessions": [], "total": 0, "skip": 0, "limit": filters["limit"]}
    return {
        "page": page,
        "filters": filters,
        "errors": errors,
        "args": args,
        "statuses": [s.value for s in SessionStatus],
        "list_query_args": list_query_args,
        "models": model_store.list_for(user),
        "sees_everyone": policy.sees_everything(user),
    }


@bp.get("/sessions")
def index():
    user = _user()
    context = _list_context(user, request.args)
    status = 400 if context["errors"] else 200
    if is_partial():
        return render_template("sessions/_list.html", **context), status, {"Vary": "HX-Request"}
    rerun = request.args.get("rerun")
    form = _rerun_form(user, rerun) if rerun else None
    preselect = request.args.get("model_id", "")
    context.update(_start_form_context(user, form, preselect=preselect), preselect_model_id=preselect)
    return render_template("sessions/index.html", **context), status, {"Vary": "HX-Request"}


def _form_errors(details: dict) -> dict:
    """Service error keys (parameters.pruning.sparsity) as form field names (pruning_sparsity)."""
    errors = {}
    for key, messages in details.items():
        parts = key.split(".")
        errors["_".join(parts[1:]) if len(parts) == 3 else key] = messages
    return errors


def _offered(criteria: dict) -> list:
    """The techniques the start form offers: the registry's, less what the criteria forbid."""
    forbidden = set(criteria["forbidden_techniques"])
    return [t for t in sorted(TECHNIQUES.values(), key=lambda t: t.order) if t.id not in forbidden]


def _field(technique, param) -> str:
    """A technique parameter's form field: quantization_mode, pruning_sparsity..."""
    return f"{technique.id}_{param.name}"


def _rerun_form(user, session_id: str) -> MultiDict:
    """The start form filled in with a session's model and plan ("Run again with this plan");
    parameters only the API takes (a quantization's operator set, say) are not on the form."""
    try:
        session = optimization.get_for(user, parse_id(session_id))
    except ValueError:
        raise ServiceError(400, "validation_error", "rerun is not a session's number.") from None
    fields: list[tuple[str, str]] = [("model_id", str(session.model_id))]
    if search_front.is_search(session):
        fields.append(("search", "1"))
        budget = (session.parameters.get(AUTO) or {}).get("budget_minutes")
        if budget is not None:
            fields.append(("budget_minutes", f"{budget:g}"))
    for technique in TECHNIQUES.values():
        if technique.id not in session.techniques:
            continue
        fields.append(("techniques", technique.id))
        given = session.parameters.get(technique.id) or {}
        fields += [
            (_field(technique, p), str(given[p.name])) for p in technique.form_params if p.name in given
        ]
    return MultiDict(fields)


def _start_form_context(user, form=None, errors=None, preselect: str = "") -> dict:
    criteria = optimization.current_criteria()
    models = [m for m in model_store.list_for(user) if policy.can_change(user, m.owner_id)]
    wanted = (form or {}).get("model_id", preselect)
    model = next((m for m in models if str(m.id) == wanted), models[0] if models else None)
    offered = _offered(criteria)
    unavailable = optimization.unavailable_choices(model, offered, criteria)
    return {
        "can_start": policy.can_create(user),
        "startable_models": models,
        "criteria": criteria,
        "techniques": offered,
        "enabled_labels": [t.label for t in offered if t.id in criteria["enabled_techniques"]],
        "unavailable": {
            _field(TECHNIQUES[tid], param): choices for (tid, param), choices in unavailable.items()
        },
        "param_field_name": _field,
        "start_form": form or {},
        "start_errors": errors or {},
    }


@bp.get("/sessions/start-options")
@roles_required(*policy.CREATORS)
def start_options():
    """The start form's techniques for the model now chosen (htmx, as the choice changes)."""
    return render_template("sessions/_start_techniques.html", **_start_form_context(_user(), request.args))


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ServiceError(
            400,
            "validation_error",
            "The time budget is not a number.",
            {"budget_minutes": ["Minutes, a number."]},
        ) from None
    return value


def _chosen_model(form) -> int:
    try:
        return parse_id(form.get("model_id", ""))
    except ValueError:
        raise ServiceError(
            400, "validation_error", "Choose a model.", {"model_id": ["Choose a model."]}
        ) from None


@bp.post("/sessions")
@roles_required(*policy.CREATORS)
def start():
    user = _user()
    form = request.form
    techniques = form.getlist("techniques")
    parameters = {
        t.id: {p.name: form.get(_field(t, p), "") for p in t.form_params}
        for t in TECHNIQUES.values()
        if t.id in techniques
    }
    budget = None
    if form.get("search"):
        techniques, parameters = [AUTO], {}
    try:
        if form.get("search") and form.get("budget_minutes", "").strip():
            budget = _budget(form["budget_minutes"])
        session = optimization.start(user, _chosen_model(form), techniques, parameters, budget)
    except ServiceError as exc:
        errors = {"form": [exc.message], **_form_errors(exc.details)}
        context = {**_list_context(user, MultiDict()), **_start_form_context(user, form, errors)}
        return render_template("sessions/index.html", **context), exc.status
    # No flash: the page's live status line says queued, then what follows; a flashed
    # "queued" would stay on screen, stale, after the session completes.
    return redirect(url_for("sessions.detail", session_id=session.id))


@bp.get("/sessions/export.csv")
def export():
    """The filtered list (every page of it) as CSV: the same filters as the page."""
    filters = session_query.parse(request.args)
    return Response(
        session_query.export_csv(_user(), filters),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="sessions.csv"'},
    )


@bp.get("/sessions/compare")
def compare():
    """Sessions side by side: ?ids=3,5,8 (or ids=3&ids=5); ?model_id=N alone compares that
    model's latest completed sessions and narrows the picker to them."""
    user = _user()
    model_id = _optional_id(request.args.get("model_id"))
    given = request.args.getlist("ids")
    comparison, error, status = None, None, 200
    if any(given) or model_id is not None:
        try:
            ids = session_compare.chosen_ids(user, given, model_id)
            comparison = session_compare.compare(
                user, ids, lambda sid: url_for("sessions.detail", session_id=sid)
            )
        except ServiceError as exc:
            error, status = exc.message, exc.status
    return (
        render_template(
            "sessions/compare.html",
            comparison=comparison,
            error=error,
            # What was ticked stays ticked, also when the pick was refused (seven, say).
            picked={s["session_id"] for s in comparison["sessions"]}
            if comparison
            else {int(part) for text in given for part in text.split(",") if part.strip().isdigit()},
            pickable=session_compare.pickable(user, model_id),
            models=model_store.list_for(user),
            model_id=model_id,
            most=session_compare.MAX_COMPARED,
        ),
        status,
    )


def _optional_id(text: str | None) -> int | None:
    try:
        return parse_id(text or "")
    except ValueError:
        return None


@bp.get("/sessions/<int:session_id>")
def detail(session_id: int):
    user = _user()
    session = optimization.get_for(user, session_id)
    return render_template("sessions/detail.html", **session_summaries.page_context(user, session))


@bp.post("/sessions/<int:session_id>/cancel")
@roles_required(*policy.CREATORS)
def cancel(session_id: int):
    user = _user()
    session = optimization.get_for(user, session_id)
    try:
        optimization.cancel(session, user)  # the status line says cancelling, then cancelled
    except ServiceError as exc:
        flash(exc.message, "error")
    return redirect(url_for("sessions.detail", session_id=session_id))


@bp.get("/sessions/<int:session_id>/artifact")
def artifact(session_id: int):
    session = optimization.get_for(_user(), session_id)
    given = request.args.get("candidate")
    try:
        candidate = None if given is None else parse_id(given, smallest=0)
    except ValueError:
        raise ServiceError(400, "validation_error", "candidate is not a candidate's number.") from None
    path = optimization.artifact_path(session, candidate)
    return send_file(
        path,
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=optimization.artifact_download_name(session, candidate),
    )
