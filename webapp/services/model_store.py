"""The model store: accept uploads, analyse them in the sandbox, keep them content-addressed."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import zipfile
from pathlib import Path
from typing import BinaryIO

from flask import current_app
from marshmallow import Schema, fields, validate
from sqlalchemy import func, select

from ..bounds import Printable, parse_json, printable
from ..engine import datasets, formats, screening
from ..engine.errors import DatasetRejected, EngineError, scrub_paths
from ..engine.metrics import AUTO, TASKS
from ..extensions import db
from ..tables import ACTIVE_STATUSES, ModelMetadata, OptimizationSession, User, utcnow
from . import audit, caching, get, policy, stored_files
from .errors import ServiceError
from .sandbox import SandboxError, run_job
from .storage import TooLarge

log = logging.getLogger("optideck.models")

MAX_NAME = 200


class ModelUploadSchema(Schema):
    """The text fields of an upload: the Models page and POST /models share them."""

    name = fields.String(validate=[validate.Length(max=200), Printable()])
    input_shape = fields.String(
        validate=validate.Length(max=10_000),
        metadata={"description": 'JSON, when the file does not carry it: [1, 64] or {"input": [1, 64]}'},
    )
    task = fields.String(
        load_default=AUTO,
        validate=validate.OneOf(list(TASKS)),
        metadata={
            "description": "The metric that gates this model's sessions. "
            + " ".join(f"`{task.id}`: {task.description}" for task in TASKS.values())
        },
    )


def _settings() -> dict:
    return current_app.config["OPTIDECK"]


def parse_input_shape(text: str | None):
    """input_shape as sent in a form field: JSON list, or {name: list}."""
    if text is None or not text.strip():
        return None
    try:
        value = parse_json(text)
    except json.JSONDecodeError as exc:
        raise ServiceError(
            400,
            "validation_error",
            "input_shape is not valid JSON.",
            {"input_shape": [f"Not JSON: {exc.msg}. Example: [1, 64]"]},
        ) from exc
    if not isinstance(value, list | dict):
        raise ServiceError(
            400,
            "validation_error",
            "input_shape must be a list or an object.",
            {"input_shape": ['Example: [1, 64] or {"input": [1, 64]}']},
        )
    return value


def _refuse_a_copy(owner: User, name: str, sha: str, eval_sha: str | None, task: str) -> None:
    """The same bytes (and evaluation data, and task metric) under a name this user already
    has are the same model, not a new version of it."""
    same = db.session.scalar(
        select(ModelMetadata).where(
            ModelMetadata.owner_id == owner.id,
            ModelMetadata.name == name,
            ModelMetadata.sha256 == sha,
            ModelMetadata.eval_data_sha256.is_(None)
            if eval_sha is None
            else ModelMetadata.eval_data_sha256 == eval_sha,
            ModelMetadata.task == task,
            ModelMetadata.deleted_at.is_(None),
        )
    )
    if same is not None:
        message = (
            f"This is the same model as {same.name} v{same.version}: the same file"
            f"{', evaluation data' if eval_sha else ''} and task metric. Nothing new was stored."
        )
        raise ServiceError(409, "conflict", message, {"file": [message], "model_id": [str(same.id)]})


def add(
    owner: User,
    stream: BinaryIO,
    filename: str,
    name: str | None,
    eval_stream: BinaryIO | None = None,
    input_shape=None,
    task: str = AUTO,
) -> ModelMetadata:
    """Store and analyse an upload; on any failure nothing stays behind. `task` is an id of
    TASKS, checked by ModelUploadSchema."""
    # A name taken from the file's name was never checked like a typed one.
    name = (name or printable(Path(filename or "model").stem) or "model").strip()[:MAX_NAME]
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
        _refuse_a_copy(owner, name, sha, eval_sha, task)
        analysis = _analyse(model_tmp, eval_tmp, input_shape, owner.id)
        version = 1 + (
            db.session.scalar(
                select(func.max(ModelMetadata.version)).where(
                    ModelMetadata.name == name, ModelMetadata.owner_id == owner.id
                )
            )
            or 0
        )
        model = ModelMetadata(
            name=name,
            version=version,
            format=analysis["format"],
            sha256=sha,
            size_bytes=size,
            parameter_count=analysis["parameter_count"],
            input_spec=analysis["inputs"],
            analysis=analysis,
            eval_data_sha256=eval_sha,
            eval_data_summary=analysis["eval_data"],
            task=task,
            owner_id=owner.id,
        )
        db.session.add(model)
        db.session.flush()
        audit.record(
            "model.upload",
            user=owner,
            resource=f"model:{model.id}",
            detail=f"{model.format} {size} bytes sha256={sha[:12]} task={task}",
            commit=False,
        )
        stored_files.keep(model_tmp, sha, size)
        if eval_tmp is not None and eval_sha is not None:  # both or neither: spooled together
            stored_files.keep(eval_tmp, eval_sha, eval_tmp.stat().st_size)
        db.session.commit()
        caching.invalidate()
        return model
    except BaseException:
        db.session.rollback()
        raise
    finally:
        for path in spooled:
            path.unlink(missing_ok=True)


class AnalysisSlots:
    """How many uploads one web process analyses at once, one per user: each analysis is a
    sandboxed worker with the sandbox's memory, and an operator's parallel uploads must not
    add up to the host's."""

    def __init__(self, slots: int, wait_seconds: float):
        self._slots = threading.BoundedSemaphore(slots)
        self._wait = wait_seconds
        self._lock = threading.Lock()
        self._users: set[int] = set()

    @contextlib.contextmanager
    def taken(self, user_id: int):
        with self._lock:
            if user_id in self._users:
                raise ServiceError(
                    429,
                    "rate_limited",
                    "Another upload of yours is being analysed; send this one when it is done.",
                    {"file": ["Wait for your other upload to finish."]},
                )
            self._users.add(user_id)
        try:
            if not self._slots.acquire(timeout=self._wait):
                raise ServiceError(503, "unavailable", "Every analysis slot is busy; try again shortly.")
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._users.discard(user_id)


def _analyse(model_path: Path, eval_path: Path | None, input_shape, owner_id: int) -> dict:
    """Open the upload in the sandbox: format, inputs, parameters, baseline latency.
    What can be refused from the bytes alone is refused here, before any worker starts."""
    settings = _settings()
    sandbox = get("sandbox")
    unpacked = settings["uploads"]["max_unpacked_bytes"]
    try:
        if zipfile.is_zipfile(model_path):
            # Before a member is read: the format's own marker member could be a bomb.
            screening.check_zip(model_path, unpacked)
        model_format = formats.detect_format(model_path)
        if model_format != formats.ONNX and not sandbox.accepts_code:
            raise EngineError(
                "TorchScript and .pt2 files carry code, and this server cannot isolate "
                "the code of uploads (no sandbox works here; see /config). Upload an "
                "ONNX export of the model instead."
            )
        if eval_path is not None:
            screening.check_npz(eval_path, datasets.MEMBERS, unpacked)
    except EngineError as exc:
        raise _rejected(exc.kind, exc.message, isinstance(exc, DatasetRejected)) from exc
    with get("analysis_slots").taken(owner_id):
        return _run_analysis(model_path, eval_path, input_shape)


def _run_analysis(model_path: Path, eval_path: Path | None, input_shape) -> dict:
    settings = _settings()
    sandbox = get("sandbox")
    threads = settings["criteria"]["threads"]
    inputs = {"model_path": model_path}
    if eval_path is not None:
        inputs["eval_data_path"] = eval_path
    try:
        message = run_job(
            sandbox,
            {
                "kind": "analyse",
                "threads": threads,
                "input_shape": input_shape,
                "latency_seconds": settings["executor"]["latency_seconds"],
            },
            inputs,
            settings["uploads"]["analysis_timeout_seconds"],
            threads,
        )
    except (SandboxError, OSError) as exc:
        log.warning("analysis worker failed: %s", exc)
        raise _rejected(
            "crashed", "The analyser failed on this file; it is damaged or not a model.", False
        ) from exc
    if message[0] == "result" and isinstance(message[1], dict):
        return message[1]
    error_type, text = str(message[1])[:32], scrub_paths(str(message[2]))[:2000]
    raise _rejected(error_type, text, error_type == "dataset_rejected")


def _rejected(error_type: str, message: str, about_data: bool) -> ServiceError:
    return ServiceError(422, error_type, message, {"eval_data" if about_data else "file": [message]})


def _spool(blobs, stream, limit, field, suffix=""):
    try:
        path, sha, size = blobs.spool(stream, limit, suffix=suffix)
    except TooLarge as exc:
        raise ServiceError(
            413,
            "too_large",
            f"The upload is larger than {limit} bytes.",
            {field: [f"Larger than {limit} bytes."]},
        ) from exc
    if size == 0:
        path.unlink(missing_ok=True)
        raise ServiceError(
            400, "validation_error", "The uploaded file is empty.", {field: ["The file is empty (0 bytes)."]}
        )
    return path, sha, size


def query_for(user: User):
    query = select(ModelMetadata).where(ModelMetadata.deleted_at.is_(None))
    return policy.scope(query, ModelMetadata.owner_id, user)


def list_for(user: User, search: str = "") -> list[ModelMetadata]:
    """The models this user may see, newest first; `search` matches name or format."""
    query = query_for(user)
    if search.strip():
        text = search.strip()[:200]
        query = query.where(
            ModelMetadata.name.icontains(text, autoescape=True)
            | ModelMetadata.format.icontains(text, autoescape=True)
        )
    return list(db.session.scalars(query.order_by(ModelMetadata.created_at.desc(), ModelMetadata.id.desc())))


def get_for(user: User, model_id: int) -> ModelMetadata:
    """The model if this user may see it; 404 alike for missing and not theirs."""
    model = db.session.get(ModelMetadata, model_id)
    if model is None or model.deleted_at is not None or not policy.can_see(user, model.owner_id):
        raise ServiceError(404, "not_found", f"No model {model_id}.")
    return model


def delete(model: ModelMetadata, by: User) -> None:
    if not policy.can_change(by, model.owner_id):
        audit.deny("model.delete", by, resource=f"model:{model.id}")
    busy = db.session.scalar(
        select(func.count())
        .select_from(OptimizationSession)
        .where(OptimizationSession.model_id == model.id, OptimizationSession.status.in_(ACTIVE_STATUSES))
    )
    if busy:
        raise ServiceError(
            409,
            "conflict",
            f"Model {model.id} is used by {busy} queued or running session(s); "
            "cancel them or wait for them to finish.",
        )
    model.deleted_at = utcnow()
    audit.record("model.delete", user=by, resource=f"model:{model.id}", commit=False)
    # The bytes stay while another model, evaluation set or artifact still needs them.
    stored_files.commit_releasing([model.sha256, model.eval_data_sha256])
    caching.invalidate()


def file_path(model: ModelMetadata) -> Path:
    """The model's file on this host's disk (fetched first from a bucket store)."""
    return get("blobs").local_copy(model.sha256)


def eval_path(model: ModelMetadata) -> Path | None:
    return get("blobs").local_copy(model.eval_data_sha256) if model.eval_data_sha256 else None
