"""ModelStore: accept uploads, analyse them in a worker, keep them content-addressed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import BinaryIO

from flask import current_app
from sqlalchemy import func, select

from ..auth import audit
from ..engine import worker
from ..extensions import db
from ..models import ACTIVE_STATUSES, ModelMetadata, OptimizationSession, User, utcnow
from . import dashboard, get, visibility
from .errors import ServiceError
from .isolation import IsolatedFailure, run_isolated
from .storage import TooLarge

log = logging.getLogger("optideck.models")

MAX_NAME = 200


def _settings() -> dict:
    return current_app.config["OPTIDECK"]


def parse_input_shape(text: str | None):
    """input_shape as sent in a form field: JSON list, or {name: list}."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServiceError(400, "validation_error", "input_shape is not valid JSON.",
                           {"input_shape": [f"Not JSON: {exc.msg}. Example: [1, 64]"]}) from exc
    if not isinstance(value, list | dict):
        raise ServiceError(400, "validation_error", "input_shape must be a list or an object.",
                           {"input_shape": ["Example: [1, 64] or {\"input\": [1, 64]}"]})
    return value


def add(owner: User, stream: BinaryIO, filename: str, name: str | None,
        eval_stream: BinaryIO | None = None, input_shape=None) -> ModelMetadata:
    """Store and analyse an upload; on any failure nothing stays behind."""
    name = (name or Path(filename or "model").stem or "model").strip()[:MAX_NAME]
    blobs = get("blobs")
    limit = _settings()["uploads"]["max_bytes"]
    spooled: list[Path] = []
    try:
        model_tmp, sha, size = _spool(blobs, stream, limit, "file")
        spooled.append(model_tmp)
        eval_tmp = eval_sha = None
        if eval_stream is not None:
            eval_tmp, eval_sha, _ = _spool(blobs, eval_stream, limit, "eval_data", suffix=".npz")
            spooled.append(eval_tmp)
        try:
            analysis = run_isolated(
                worker.analyse_upload,
                (str(model_tmp), _settings()["criteria"]["threads"], input_shape,
                 str(eval_tmp) if eval_tmp else None),
                timeout=_settings()["uploads"]["analysis_timeout_seconds"],
                initializer=worker.limit_threads, init_args=(_settings()["criteria"]["threads"],),
            )
        except IsolatedFailure as exc:
            field = "eval_data" if exc.kind == "dataset_rejected" else "file"
            raise ServiceError(422, exc.kind, exc.message, {field: [exc.message]}) from exc
        version = 1 + (db.session.scalar(
            select(func.max(ModelMetadata.version)).where(
                ModelMetadata.name == name, ModelMetadata.owner_id == owner.id)
        ) or 0)
        model = ModelMetadata(
            name=name, version=version, format=analysis["format"], sha256=sha, size_bytes=size,
            parameter_count=analysis["parameter_count"], input_spec=analysis["inputs"],
            analysis=analysis, eval_data_sha256=eval_sha, eval_data_summary=analysis["eval_data"],
            owner_id=owner.id,
        )
        db.session.add(model)
        db.session.flush()
        audit.record("model.upload", user=owner, resource=f"model:{model.id}",
                     detail=f"{model.format} {size} bytes sha256={sha[:12]}", commit=False)
        # Files first, row second: a crash in between leaves an unreferenced
        # file (harmless, same bytes) rather than a row without its file.
        blobs.adopt(model_tmp, sha)
        if eval_tmp is not None:
            blobs.adopt(eval_tmp, eval_sha)
        db.session.commit()
        dashboard.invalidate()
        return model
    except BaseException:
        db.session.rollback()
        raise
    finally:
        for path in spooled:
            path.unlink(missing_ok=True)


def _spool(blobs, stream, limit, field, suffix=""):
    try:
        path, sha, size = blobs.spool(stream, limit, suffix=suffix)
    except TooLarge as exc:
        raise ServiceError(413, "too_large", f"The upload is larger than {limit} bytes.",
                           {field: [f"Larger than {limit} bytes."]}) from exc
    if size == 0:
        path.unlink(missing_ok=True)
        raise ServiceError(400, "validation_error", "The uploaded file is empty.",
                           {field: ["The file is empty (0 bytes)."]})
    return path, sha, size


def query_for(user: User):
    query = select(ModelMetadata).where(ModelMetadata.deleted_at.is_(None))
    if not visibility.sees_everything(user):
        query = query.where(ModelMetadata.owner_id == user.id)
    return query


def list_for(user: User, search: str = "") -> list[ModelMetadata]:
    """The models this user may see, newest first; `search` matches name or format."""
    query = query_for(user)
    if search.strip():
        text = search.strip()[:200]
        query = query.where(ModelMetadata.name.icontains(text, autoescape=True)
                            | ModelMetadata.format.icontains(text, autoescape=True))
    return list(db.session.scalars(query.order_by(ModelMetadata.created_at.desc(),
                                                  ModelMetadata.id.desc())))


def get_for(user: User, model_id: int) -> ModelMetadata:
    """The model if this user may see it; 404 alike for missing and not theirs."""
    model = db.session.get(ModelMetadata, model_id)
    if model is None or model.deleted_at is not None or not visibility.can_see(user, model.owner_id):
        raise ServiceError(404, "not_found", f"No model {model_id}.")
    return model


def delete(model: ModelMetadata, by: User) -> None:
    if not visibility.can_change(by, model.owner_id):
        audit.deny("model.delete", by, resource=f"model:{model.id}")
    busy = db.session.scalar(
        select(func.count()).select_from(OptimizationSession).where(
            OptimizationSession.model_id == model.id,
            OptimizationSession.status.in_(ACTIVE_STATUSES))
    )
    if busy:
        raise ServiceError(409, "conflict",
                           f"Model {model.id} is used by {busy} queued or running session(s); "
                           "cancel them or wait for them to finish.")
    model.deleted_at = utcnow()
    audit.record("model.delete", user=by, resource=f"model:{model.id}", commit=False)
    db.session.commit()
    dashboard.invalidate()
    for sha in (model.sha256, model.eval_data_sha256):
        if sha and not _still_used(sha):
            get("blobs").remove(sha)


def _still_used(sha: str) -> bool:
    return bool(db.session.scalar(
        select(func.count()).select_from(ModelMetadata).where(
            ModelMetadata.deleted_at.is_(None),
            (ModelMetadata.sha256 == sha) | (ModelMetadata.eval_data_sha256 == sha))
    ))


def file_path(model: ModelMetadata) -> Path:
    return get("blobs").path_for(model.sha256)


def eval_path(model: ModelMetadata) -> Path | None:
    return get("blobs").path_for(model.eval_data_sha256) if model.eval_data_sha256 else None
