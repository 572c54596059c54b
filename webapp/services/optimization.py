"""Optimization sessions: start, follow, cancel and finish them."""

from __future__ import annotations

import copy
import logging
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from ..auth import audit
from ..bounds import file_stem
from ..engine.planner import PlanError, build_plan
from ..engine.runner import params_text
from ..extensions import db
from ..models import (
    ModelMetadata,
    OptimizationSession,
    SessionEvent,
    SessionStatus,
    User,
    utcnow,
)
from . import alerts, artifacts, dashboard, get, model_store, stored_files, visibility
from . import criteria as criteria_service
from .errors import ServiceError

log = logging.getLogger("optideck.sessions")


def current_criteria() -> dict:
    """The optimization criteria new sessions start with (a copy: sessions freeze it)."""
    in_force = criteria_service.current()
    return {**copy.deepcopy(in_force.document), "version": in_force.version}


def summary(session: OptimizationSession) -> dict:
    """The session as DESIGN.md names it: the API, the pages and live events all use this."""
    model = session.model
    return _summary(
        session,
        model.name if model is not None else None,
        model is None or model.deleted_at is not None,
        session.owner.username if session.owner else None,
    )


def summaries(query) -> list[dict]:
    """summary() of each session `query` selects, read as plain columns: for lists, where
    loading 50 whole sessions (criteria, plan and all) cost more than the rest together."""
    rows = db.session.execute(
        query.with_only_columns(
            *(getattr(OptimizationSession, name) for name in SUMMARY_COLUMNS),
            ModelMetadata.name.label("model_name"),
            ModelMetadata.deleted_at.label("model_deleted_at"),
            ModelMetadata.id.label("model_found"),
            User.username.label("owner_name"),
        )
        .outerjoin(ModelMetadata, ModelMetadata.id == OptimizationSession.model_id)
        .outerjoin(User, User.id == OptimizationSession.owner_id)
    )
    return [
        _summary(
            row, row.model_name, row.model_found is None or row.model_deleted_at is not None, row.owner_name
        )
        for row in rows
    ]


SUMMARY_COLUMNS = (
    "id",
    "model_id",
    "status",
    "progress",
    "current_step",
    "techniques",
    "results",
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "estimated_completion_at",
    "error_type",
    "error_message",
)


def _summary(s, model_name: str | None, model_deleted: bool, owner: str | None) -> dict:
    """`s` is a session, or a row with its SUMMARY_COLUMNS."""
    results = s.results or {}
    return {
        "session_id": s.id,
        "model_id": s.model_id,
        "model_name": model_name,
        "model_deleted": model_deleted,
        "owner": owner,
        "status": s.status,
        "progress_percentage": round(s.progress, 1),
        "current_step": s.current_step,
        "techniques": s.techniques,
        "size_reduction_percent": results.get("size_reduction_percent"),
        "speed_improvement_percent": results.get("speed_improvement_percent"),
        "accuracy_retention_percent": results.get("accuracy_retention_percent"),
        "criteria_met": results.get("criteria_met"),
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "started_at": s.started_at,
        "completed_at": s.completed_at,
        "estimated_completion_at": s.estimated_completion_at,
        "error_type": s.error_type,
        "error_message": s.error_message,
    }


def start(user: User, model_id: int, techniques: list[str], parameters: dict) -> OptimizationSession:
    model = db.session.get(ModelMetadata, model_id)
    if model is None or not visibility.can_see(user, model.owner_id):
        raise ServiceError(404, "not_found", f"No model {model_id}.", {"model_id": [f"No model {model_id}."]})
    if model.deleted_at is not None:
        raise ServiceError(
            409, "model_deleted", f"Model {model_id} was deleted.", {"model_id": ["The model was deleted."]}
        )
    if not visibility.can_change(user, model.owner_id):
        audit.deny("session.start", user, resource=f"model:{model.id}")
    criteria = current_criteria()
    try:
        plan = build_plan(
            model.format, techniques, parameters, criteria, has_eval_data=model.eval_data_sha256 is not None
        )
    except PlanError as exc:
        raise ServiceError(
            422 if exc.unprocessable else 400,
            "unprocessable" if exc.unprocessable else "validation_error",
            exc.message,
            exc.details,
        ) from exc
    session = OptimizationSession(
        model_id=model.id,
        owner_id=user.id,
        status=SessionStatus.QUEUED.value,
        techniques=[step["technique"] for step in plan],
        parameters={step["technique"]: step["params"] for step in plan},
        criteria=criteria,
        plan=plan,
        criteria_version=criteria["version"],
    )
    db.session.add(session)
    db.session.flush()
    _event(session, "queued", None, f"Queued with plan: {_plan_text(plan)}")
    audit.record(
        "session.start",
        user=user,
        resource=f"session:{session.id}",
        detail=f"model:{model.id} {session.techniques}",
        commit=False,
    )
    db.session.commit()
    dashboard.invalidate()
    get("status").publish_if_changed()
    get("executor").wake()
    return session


def _plan_text(plan: list[dict]) -> str:
    return ", then ".join(f"{s['technique']} ({params_text(s['params'])})" for s in plan)


def query_for(user: User):
    query = select(OptimizationSession)
    if not visibility.sees_everything(user):
        query = query.where(OptimizationSession.owner_id == user.id)
    return query


def for_model(user: User, model_id: int, limit: int = 50) -> list[OptimizationSession]:
    query = query_for(user).where(OptimizationSession.model_id == model_id)
    return list(
        db.session.scalars(
            query.order_by(OptimizationSession.created_at.desc(), OptimizationSession.id.desc()).limit(limit)
        )
    )


def get_for(user: User, session_id: int) -> OptimizationSession:
    """The session if this user may see it; 404 alike for missing and not theirs."""
    session = db.session.get(OptimizationSession, session_id)
    if session is None or not visibility.can_see(user, session.owner_id):
        raise ServiceError(404, "not_found", f"No session {session_id}.")
    return session


def cancel(session: OptimizationSession, by: User) -> OptimizationSession:
    if not visibility.can_change(by, session.owner_id):
        audit.deny("session.cancel", by, resource=f"session:{session.id}")
    if session.is_finished:
        raise ServiceError(
            409, "conflict", f"Session {session.id} is already {session.status}; nothing to cancel."
        )
    now = utcnow()
    # Queued: cancelled here and now, unless a worker claimed it meanwhile.
    claimed = db.session.execute(
        update(OptimizationSession)
        .where(OptimizationSession.id == session.id, OptimizationSession.status == SessionStatus.QUEUED.value)
        .values(
            status=SessionStatus.CANCELLED.value, completed_at=now, updated_at=now, cancel_requested_at=now
        )
    ).rowcount
    if not claimed:
        # Running: the executor stops the worker within its grace period.
        session.cancel_requested_at = now
    audit.record("session.cancel", user=by, resource=f"session:{session.id}", commit=False)
    db.session.commit()
    db.session.refresh(session)
    if claimed:
        _event(session, "cancelled", None, f"Cancelled by {by.username} before it started.")
        db.session.commit()
        _publish("session_cancelled", session)
    else:
        get("executor").wake()
    return session


def events(session: OptimizationSession) -> list[SessionEvent]:
    return list(session.events)


def artifact_path(session: OptimizationSession) -> Path:
    if session.status != SessionStatus.COMPLETED.value or not session.artifact_sha256:
        raise ServiceError(
            404, "not_found", f"Session {session.id} has no optimized model ({session.status})."
        )
    path = get("blobs").path_for(session.artifact_sha256)
    if not path.is_file():
        raise ServiceError(404, "not_found", "The optimized model file is missing from storage.")
    return path


def artifact_download_name(session: OptimizationSession) -> str:
    """The file name the optimized model downloads as. Built from the model's name, which in
    rows older than the upload check may hold anything, even a line break."""
    return f"{file_stem(session.model.name)}-session{session.id}-optimized.onnx"


# The executor reports what its workers say through the functions below.


def claim_next(per_user: int) -> OptimizationSession | None:
    """Take the oldest queued session whose owner runs fewer than `per_user` sessions;
    several dispatchers never take the same one."""
    busy_owners = (
        select(OptimizationSession.owner_id)
        .where(
            OptimizationSession.status == SessionStatus.RUNNING.value,
            OptimizationSession.owner_id.is_not(None),
        )
        .group_by(OptimizationSession.owner_id)
        .having(func.count() >= per_user)
    )
    while True:
        candidate = db.session.scalar(
            select(OptimizationSession.id)
            .where(
                OptimizationSession.status == SessionStatus.QUEUED.value,
                OptimizationSession.owner_id.is_(None) | OptimizationSession.owner_id.not_in(busy_owners),
            )
            .order_by(OptimizationSession.created_at, OptimizationSession.id)
            .limit(1)
        )
        if candidate is None:
            return None
        now = utcnow()
        won = db.session.execute(
            update(OptimizationSession)
            .where(
                OptimizationSession.id == candidate, OptimizationSession.status == SessionStatus.QUEUED.value
            )
            .values(
                status=SessionStatus.RUNNING.value,
                started_at=now,
                updated_at=now,
                heartbeat_at=now,
                current_step="starting",
            )
        ).rowcount
        db.session.commit()
        if won:
            session = db.session.get(OptimizationSession, candidate)
            db.session.refresh(session)
            _event(session, "started", None, "A worker took the session.")
            db.session.commit()
            _publish("session_started", session)
            return session


def job_for(session: OptimizationSession) -> dict:
    """The session's job for the engine, with the stored files' paths on this server (the
    executor copies them into the worker's sandbox)."""
    model = session.model
    criteria = session.criteria
    eval_path = model_store.eval_path(model)
    return {
        "session_id": session.id,
        "model_path": str(model_store.file_path(model)),
        "model_format": model.format,
        "input_specs": model.input_spec,
        "steps": session.plan,
        "criteria": criteria,
        "eval_data_path": str(eval_path) if eval_path else None,
        "deadline": (
            session.started_at + timedelta(minutes=criteria["max_optimization_time_minutes"])
        ).timestamp(),
    }


def _running(session_id: int) -> OptimizationSession | None:
    session = db.session.get(OptimizationSession, session_id)
    if session is None or session.status != SessionStatus.RUNNING.value:
        return None
    return session


def record_progress(session_id: int, pct: float, step: str) -> None:
    session = _running(session_id)
    if session is None:
        return
    now = utcnow()
    # Progress only moves forward, whatever order messages arrive in.
    session.progress = max(session.progress, min(float(pct), 100.0))
    session.current_step = step
    session.updated_at = session.heartbeat_at = now
    if session.started_at and session.progress >= 5:
        elapsed = now - session.started_at
        session.estimated_completion_at = now + elapsed * ((100 - session.progress) / session.progress)
    db.session.commit()
    _publish("session_progress", session)


def record_event(session_id: int, kind: str, step: str | None, message: str, data: dict) -> None:
    session = _running(session_id)
    if session is None:
        return
    _event(session, kind, step, message, data)
    session.updated_at = utcnow()
    db.session.commit()


def record_heartbeat(session_id: int) -> None:
    """The session's worker is alive (the executor calls this every few seconds)."""
    session = _running(session_id)
    if session is not None:
        session.heartbeat_at = utcnow()
        db.session.commit()


def record_completed(session_id: int, outcome: dict, artifact: Path) -> None:
    """Finish a session with the worker's results and its artifact, a file the executor
    took out of the sandbox; it is checked here before it reaches storage."""
    session = _running(session_id)
    try:
        if session is None:
            return
        try:
            sha, size = artifacts.check(artifact)
            results = artifacts.results(outcome, session.model.size_bytes, size)
        except artifacts.Refused as exc:
            log.warning("session %s: artifact refused: %s", session_id, exc)
            record_failed(session_id, "worker_lost", f"The worker's optimized model was refused: {exc}")
            return
        stored_files.keep(artifact, sha, size)
        session.artifact_sha256, session.artifact_size_bytes = sha, size
        _finish_completed(session, results)
    finally:
        artifact.unlink(missing_ok=True)


def _finish_completed(session: OptimizationSession, results: dict) -> None:
    session.results = results
    session.size_reduction_percent = results["size_reduction_percent"]
    session.speed_improvement_percent = results["speed_improvement_percent"]
    _finish(session, SessionStatus.COMPLETED, utcnow())
    met = "criteria met" if results["criteria_met"] else "criteria NOT met"
    _event(
        session,
        "completed",
        None,
        (
            f"Done: {results['size_reduction_percent']:.1f} % smaller, "
            f"{results['speedup']:.2f}x speed, "
            f"{results['accuracy_retention_percent']:.2f} % accuracy retention; {met}."
        ),
    )
    db.session.commit()
    _publish("session_completed", session)


def record_failed(session_id: int, error_type: str, message: str) -> None:
    session = db.session.get(OptimizationSession, session_id)
    if session is None or session.is_finished:
        return
    session.error_type, session.error_message = error_type, message
    _finish(session, SessionStatus.FAILED, utcnow())
    _event(session, "failed", session.current_step, f"Failed ({error_type}): {message}")
    db.session.commit()
    _publish("session_failed", session)


def record_cancelled(session_id: int) -> None:
    session = db.session.get(OptimizationSession, session_id)
    if session is None or session.is_finished:
        return
    _finish(session, SessionStatus.CANCELLED, utcnow())
    _event(session, "cancelled", session.current_step, "Cancelled; the worker stopped.")
    db.session.commit()
    _publish("session_cancelled", session)


def fail_stale(heartbeat_timeout: float, except_ids: set[int] = frozenset()) -> list[int]:
    """Fail running sessions whose worker stopped reporting (a crash, a restart)."""
    cutoff = utcnow() - timedelta(seconds=heartbeat_timeout)
    stale = db.session.scalars(
        select(OptimizationSession.id).where(
            OptimizationSession.status == SessionStatus.RUNNING.value,
            (OptimizationSession.heartbeat_at.is_(None)) | (OptimizationSession.heartbeat_at < cutoff),
        )
    ).all()
    lost = [sid for sid in stale if sid not in except_ids]
    for session_id in lost:
        record_failed(
            session_id, "worker_lost", f"The worker stopped reporting for more than {heartbeat_timeout:g} s."
        )
    return lost


def cancel_requests(session_ids: list[int]) -> set[int]:
    if not session_ids:
        return set()
    return set(
        db.session.scalars(
            select(OptimizationSession.id).where(
                OptimizationSession.id.in_(session_ids), OptimizationSession.cancel_requested_at.is_not(None)
            )
        )
    )


def _finish(session: OptimizationSession, status: SessionStatus, now) -> None:
    session.status = status.value
    session.completed_at = session.updated_at = now
    session.estimated_completion_at = None
    if status == SessionStatus.COMPLETED:
        session.progress = 100.0
        session.current_step = "done"


def _event(session, kind: str, step: str | None, message: str, data: dict | None = None) -> None:
    db.session.add(
        SessionEvent(
            session_id=session.id, kind=kind, step=step, progress=session.progress, message=message, data=data
        )
    )


def _publish(event: str, session: OptimizationSession) -> None:
    get("notifications").publish(event, jsonable(summary(session)), session.owner_id)
    if event == "session_progress":  # progress changes no count, average or load
        return
    dashboard.invalidate()
    get("status").publish_if_changed()
    if event == "session_failed":
        alerts.session_failed(session)


def jsonable(data: dict) -> dict:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in data.items()}
