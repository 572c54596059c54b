"""The model store pages: the list with search and upload, and each model's analysis."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.exceptions import RequestEntityTooLarge

from ..auth.guards import roles_required
from ..auth.schemas import load_form
from ..engine.metrics import TASKS
from ..services import model_store, optimization, policy, session_summaries
from ..services.errors import ServiceError
from . import is_partial, page_blueprint

bp = page_blueprint("models", __name__)


def _user():
    return current_user._get_current_object()


def _can_upload(user) -> bool:
    return policy.can_create(user)


def _upload_form(errors: dict, form) -> dict:
    """The upload panel's context: its values and errors, and the catalog of task metrics."""
    return {
        "errors": errors,
        "form": form,
        "tasks": list(TASKS.values()),
        "task_options": [(task.id, task.label) for task in TASKS.values()],
    }


def _list(user, q: str) -> dict:
    """The models table: the models this user sees, and those they may optimize."""
    models = model_store.list_for(user, q)
    optimizable = {m.id for m in models if policy.can_change(user, m.owner_id)}
    return {"models": models, "q": q, "optimizable": optimizable}


@bp.get("/models")
def index():
    user = _user()
    q = request.args.get("q", "").strip()[:200]
    context = {**_list(user, q), "can_upload": _can_upload(user), **_upload_form({}, {})}
    template = "models/_table.html" if is_partial() else "models/index.html"
    return render_template(template, **context), 200, {"Vary": "HX-Request"}


UPLOAD_FIELDS = ("file", "eval_data", "name", "input_shape", "task")


def _upload_failed(errors: dict, status: int):
    """The reasons beside their fields. htmx gets only the error boxes, so the files the user
    chose stay chosen; a plain post gets the page again with the typed values."""
    user = _user()
    if is_partial():
        return render_template("models/_upload_errors.html", errors=errors, fields=UPLOAD_FIELDS), status
    form = request.form if request.content_length and status != 413 else {}
    return render_template(
        "models/index.html", **_list(user, ""), can_upload=True, **_upload_form(errors, form)
    ), status


@bp.post("/models")
@roles_required(*policy.CREATORS)
def upload():
    try:
        data, errors = load_form(model_store.ModelUploadSchema(), request.form)
        upload_file = request.files.get("file")
    except RequestEntityTooLarge:
        return _upload_failed({"file": ["The upload is larger than this server accepts."]}, 413)
    if upload_file is None or not upload_file.filename:
        errors["file"] = ["Choose a model file."]
    if errors:
        return _upload_failed(errors, 400)
    eval_file = request.files.get("eval_data")
    try:
        model = model_store.add(
            _user(),
            upload_file.stream,
            upload_file.filename,
            data.get("name"),
            eval_file.stream if eval_file and eval_file.filename else None,
            model_store.parse_input_shape(data.get("input_shape")),
            data["task"],
        )
    except ServiceError as exc:
        # Details meant for scripts (the existing model's id, say) are no field of this form.
        fields = {key: value for key, value in (exc.details or {}).items() if key in UPLOAD_FIELDS}
        return _upload_failed(fields or {"file": [exc.message]}, exc.status)
    flash(f"Uploaded {model.name} (version {model.version}), analysed as {model.format}.", "success")
    target = url_for("models.detail", model_id=model.id)
    if is_partial():
        return "", 204, {"HX-Redirect": target}
    return redirect(target)


@bp.get("/models/<int:model_id>")
def detail(model_id: int):
    user = _user()
    model = model_store.get_for(user, model_id)
    sessions = optimization.for_model(user, model.id)
    return render_template(
        "models/detail.html",
        model=model,
        task=TASKS[model.task],
        sessions=[session_summaries.summary(s) for s in sessions],
        can_change=policy.can_change(user, model.owner_id),
    )


@bp.post("/models/<int:model_id>/delete")
@roles_required(*policy.CREATORS)
def delete(model_id: int):
    user = _user()
    model = model_store.get_for(user, model_id)
    try:
        model_store.delete(model, user)
    except ServiceError as exc:
        flash(exc.message, "error")
        return redirect(url_for("models.detail", model_id=model_id))
    flash(f"Deleted {model.name} (version {model.version}).", "success")
    return redirect(url_for("models.index"))
