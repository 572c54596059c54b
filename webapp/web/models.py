"""The model store pages: the list with an upload form, and each model's analysis."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user

from ..api.schemas import ModelUploadSchema
from ..auth.guards import roles_required
from ..auth.schemas import load_form
from ..models import Role
from ..services import model_store, optimization, visibility
from ..services.errors import ServiceError
from . import page_blueprint

bp = page_blueprint("models", __name__)


def _user():
    return current_user._get_current_object()


def _list_page(errors=None, form=None, status=200):
    user = _user()
    return render_template(
        "models/index.html", models=model_store.list_for(user), errors=errors or {},
        form=form or {}, can_upload=user.role in (Role.ADMIN, Role.OPERATOR),
    ), status


@bp.get("/models")
def index():
    return _list_page()


@bp.post("/models")
@roles_required(Role.ADMIN, Role.OPERATOR)
def upload():
    data, errors = load_form(ModelUploadSchema(), request.form)
    upload_file = request.files.get("file")
    if upload_file is None or not upload_file.filename:
        errors["file"] = ["Choose a model file."]
    if errors:
        return _list_page(errors, request.form, 400)
    eval_file = request.files.get("eval_data")
    try:
        model = model_store.add(
            _user(), upload_file.stream, upload_file.filename, data.get("name"),
            eval_file.stream if eval_file and eval_file.filename else None,
            model_store.parse_input_shape(data.get("input_shape")),
        )
    except ServiceError as exc:
        return _list_page(exc.details or {"file": [exc.message]}, request.form, exc.status)
    flash(f"Uploaded {model.name} (version {model.version}), analysed as {model.format}.",
          "success")
    return redirect(url_for("models.detail", model_id=model.id))


@bp.get("/models/<int:model_id>")
def detail(model_id: int):
    user = _user()
    model = model_store.get_for(user, model_id)
    sessions = optimization.for_model(user, model.id)
    return render_template("models/detail.html", model=model,
                           sessions=[optimization.summary(s) for s in sessions],
                           can_change=visibility.can_change(user, model.owner_id))


@bp.post("/models/<int:model_id>/delete")
@roles_required(Role.ADMIN, Role.OPERATOR)
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
